//! Faster R-CNN's region proposal network, tensor and box side: parity with torchvision's own
//! modules (tests/reference/rpn.py: `AnchorGenerator`, `RegionProposalNetwork`'s matcher, box
//! coder, `compute_loss` on tchcv's sample, `filter_proposals`), run at test time on fresh seeded
//! cases, plus properties of the sampler, errors, and `tchcv sample`.
//!
//! Tolerances (each test repeats its own):
//! - anchors: exact (both are whole pixels computed with the same f32 steps);
//! - labels before sampling: identical; max IoU: exact (the same f32 operations);
//! - regression targets (at positives) and encoded deltas: |a - b| <= 1e-5 |b| + 1e-6 (`ln` of
//!   Rust's libm against ATen's vector `log` may differ in the last bit);
//! - decoded boxes: 1e-6 relative + 1e-4 px;
//! - RPN loss parts: 1e-5 relative + 1e-7; gradients: 1e-4 relative + 1e-6 (sum order);
//! - proposals: the same count, boxes within 1e-6 relative + 1e-4 px, scores within 1e-6
//!   (CPU results are bit-identical in practice: one libtorch does the work on both sides).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use tch::{Device, Kind, Reduction, Tensor};
use tchcv::bbox::rpn::{encode_deltas, IGNORE, NEGATIVE, POSITIVE};
use tchcv::bbox::sampler::negative_bce;
use tchcv::bbox::{
    filter_proposals, ops, sample_batch, sample_image, ProposalConfig, RpnCoder, SamplerConfig,
    SamplerKind,
};
use tchcv::dist::global_normalizer_by;
use tchcv::loss::{
    LossInputs, LossKind, LossSums, Normalization, NormalizeBy, RpnLoss, RpnLossConfig,
    RpnLossInputs,
};
use tchcv::rng::Rng;
use tchcv::spec::ModelSpec;

type Tensors = HashMap<String, Tensor>;

const TARGET_RTOL: f64 = 1e-5;
const TARGET_ATOL: f64 = 1e-6;

fn model(name: &str) -> PathBuf {
    common::repo().join("models").join(name)
}

fn load(path: &Path) -> (ModelSpec, RpnCoder) {
    let spec = ModelSpec::load(path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
    let rpn = RpnCoder::from_spec(&spec).unwrap();
    (spec, rpn)
}

/// `patch` merged into `target` (objects recursively, anything else replaced).
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// rpn_small.json with `patch` merged in (and its `num_anchors` guard removed), in `dir`.
fn patched_spec(dir: &Path, patch: Value) -> PathBuf {
    patched_spec_without(dir, patch, &[])
}

/// [`patched_spec`] without the `anchors` fields `drop` (so their defaults apply).
fn patched_spec_without(dir: &Path, patch: Value, drop: &[&str]) -> PathBuf {
    let text = std::fs::read_to_string(model("rpn_small.json")).unwrap();
    let mut spec: Value = serde_json::from_str(&text).unwrap();
    spec.as_object_mut().unwrap().remove("num_anchors");
    merge(&mut spec, &patch);
    for key in drop {
        spec["anchors"].as_object_mut().unwrap().remove(*key);
    }
    let path = dir.join("patched_rpn.json");
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

/// A layout unlike rpn_small: a non-square input, non-square maps, float sizes, per-map ratio
/// lists of different lengths (so per-cell counts differ between maps).
fn odd_layout() -> Value {
    json!({
        "input_size": [200, 120],
        "anchors": {"feature_maps": [[30, 50], [15, 25], [8, 13]],
                    "sizes": [[16, 20.158737, 25.398417], [48], [64, 128]],
                    "aspect_ratios": [[0.5, 1.0, 2.0], [0.25, 1.0, 4.0, 1.5], [1.0]]},
        "rpn": {"pre_nms_top_n": {"train": 300, "test": 120}, "post_nms_top_n": {"train": 200, "test": 50}}
    })
}

/// [`odd_layout`] with torchvision's default strides (input // map: 4, 8 and 15 px).
fn odd_layout_spec(dir: &Path) -> PathBuf {
    patched_spec_without(dir, odd_layout(), &["strides"])
}

/// Run `rpn.py <cmd> --spec SPEC ... --out DIR` and read `<cmd>.safetensors` and `.json`.
fn reference(dir: &Path, cmd: &str, spec: &Path, extra: &[&str]) -> (Tensors, Value) {
    let (spec, out) = (spec.display().to_string(), dir.display().to_string());
    let mut args = vec![cmd, "--spec", &spec, "--out", &out];
    args.extend(extra);
    common::run_reference("rpn.py", &args);
    let tensors = common::read_safetensors(&dir.join(format!("{cmd}.safetensors")));
    let text = std::fs::read_to_string(dir.join(format!("{cmd}.json"))).unwrap();
    (tensors, serde_json::from_str(&text).unwrap())
}

fn take<'a>(t: &'a Tensors, name: &str) -> &'a Tensor {
    t.get(name)
        .unwrap_or_else(|| panic!("reference output lacks {name}"))
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Int64)
            .contiguous()
            .view(-1),
    )
    .unwrap()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(
        t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view(-1),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Anchors
// ---------------------------------------------------------------------------------------------

fn anchors_parity(spec_path: &Path, what: &str) {
    let dir = common::scratch(what);
    let (t, meta) = reference(&dir, "anchors", spec_path, &[]);
    let (spec, rpn) = load(spec_path);
    assert_eq!(meta["count"].as_i64(), Some(spec.num_anchors()), "{what}");
    // Exact: whole pixels from the same f32 operations.
    common::assert_close(
        &format!("{what}: anchors"),
        &rpn.anchors_xyxy(),
        take(&t, "anchors"),
        0.0,
        0.0,
    );
    assert_eq!(
        rpn.anchors_per_level(),
        i64s(take(&t, "per_level")),
        "{what}"
    );
    assert_eq!(rpn.anchors_per_level(), spec.anchors_per_map(), "{what}");
}

#[test]
fn anchors_match_torchvision_rpn_small() {
    anchors_parity(&model("rpn_small.json"), "rpn_anchors_small");
}

#[test]
fn anchors_match_torchvision_odd_layout_and_given_strides() {
    let dir = common::scratch("rpn_anchors_odd_spec");
    anchors_parity(&odd_layout_spec(&dir), "rpn_anchors_odd");
    // Strides the spec gives (not input // map): torchvision's grid_anchors with them.
    let mut patch = odd_layout();
    patch["anchors"]["strides"] = json!([4, [8, 9], 15]);
    let dir = common::scratch("rpn_anchors_strides_spec");
    anchors_parity(&patched_spec(&dir, patch), "rpn_anchors_strides");
}

// ---------------------------------------------------------------------------------------------
// Labels before sampling, max IoU, regression targets
// ---------------------------------------------------------------------------------------------

fn labels_parity(spec_path: &Path, what: &str) {
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let (t, meta) = reference(&dir, "label", spec_path, &["--seed", &seed]);
    let (_, rpn) = load(spec_path);
    let mut positives = 0;
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ctx = format!("{what}: case {name}");
        let boxes = ops::host_boxes(take(&t, &format!("{name}.boxes"))).unwrap();
        let got = rpn.label(&boxes).expect(&ctx);
        let want = i64s(take(&t, &format!("{name}.labels")));
        if let Some(a) = (0..want.len()).find(|&a| got.labels[a] != want[a]) {
            panic!(
                "{ctx}: labels differ first at anchor {a} ({:?}): tchcv {} torchvision {} \
                 (max IoU {})",
                rpn.host_anchors().xyxy[a],
                got.labels[a],
                want[a],
                got.max_iou[a]
            );
        }
        // Exact: the same f32 IoU operations.
        common::assert_close(
            &format!("{ctx}: max_iou"),
            &got.max_iou_tensor(),
            take(&t, &format!("{name}.max_iou")),
            0.0,
            0.0,
        );
        let pos = Tensor::from_slice(&got.labels).eq(POSITIVE);
        let idx = pos.nonzero().view(-1);
        if idx.numel() == 0 {
            continue;
        }
        common::assert_close(
            &format!("{ctx}: regression targets at positives"),
            &got.regression_targets_tensor().index_select(0, &idx),
            &take(&t, &format!("{name}.targets")).index_select(0, &idx),
            TARGET_RTOL,
            TARGET_ATOL,
        );
        let elsewhere = got
            .regression_targets_tensor()
            .index_select(0, &pos.logical_not().nonzero().view(-1));
        assert_eq!(elsewhere.abs().sum(Kind::Double).double_value(&[]), 0.0);
        positives += got.num_pos();
    }
    assert!(
        positives > 50,
        "{what}: only {positives} positives in all cases"
    );
}

#[test]
fn labels_match_torchvision_matcher_rpn_small() {
    labels_parity(&model("rpn_small.json"), "rpn_labels_small");
}

#[test]
fn labels_match_torchvision_odd_layout() {
    let dir = common::scratch("rpn_labels_odd_spec");
    labels_parity(&odd_layout_spec(&dir), "rpn_labels_odd");
}

#[test]
fn labels_match_torchvision_with_other_thresholds_and_no_low_quality() {
    let dir = common::scratch("rpn_labels_thresholds_spec");
    let patch = json!({"matching": {"pos_iou": 0.6, "neg_iou": 0.45, "allow_low_quality": false}});
    labels_parity(&patched_spec(&dir, patch), "rpn_labels_thresholds");
}

#[test]
fn box_coding_matches_torchvision_box_coder() {
    let what = "rpn_coder";
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let path = model("rpn_small.json");
    let (t, meta) = reference(&dir, "coder", &path, &["--seed", &seed]);
    let (spec, rpn) = load(&path);
    assert_eq!(spec.coder.decode_clamp, meta["clamp"].as_f64());
    let gt = ops::host_boxes(take(&t, "gt")).unwrap();
    let encoded: Vec<f32> = gt
        .iter()
        .zip(&rpn.host_anchors().xyxy)
        .flat_map(|(g, a)| encode_deltas(g, a, None))
        .collect();
    common::assert_close(
        "encode",
        &Tensor::from_slice(&encoded).view([-1, 4]),
        take(&t, "encoded"),
        TARGET_RTOL,
        TARGET_ATOL,
    );
    let decoded = rpn.decode(&take(&t, "deltas").unsqueeze(0)).unwrap();
    common::assert_close("decode", &decoded.get(0), take(&t, "decoded"), 1e-6, 1e-4);
}

// ---------------------------------------------------------------------------------------------
// The loss for a given sample
// ---------------------------------------------------------------------------------------------

/// `count` random boxes of 10-60% of a 160 px side, inside the input.
fn random_boxes(rng: &mut Rng, count: usize) -> Vec<[f32; 4]> {
    random_boxes_sized(rng, count, 0.1, 0.6)
}

/// `count` random boxes of `lo`-`hi` of a 160 px side (aspect 1/2..2), inside the input.
fn random_boxes_sized(rng: &mut Rng, count: usize, lo: f64, hi: f64) -> Vec<[f32; 4]> {
    (0..count)
        .map(|_| {
            let side = rng.uniform(lo, hi) * 160.0;
            let ratio = rng.uniform(-0.69, 0.69).exp();
            let (w, h) = (
                (side * ratio.sqrt()).min(159.0),
                (side / ratio.sqrt()).min(159.0),
            );
            let (x, y) = (rng.uniform(0.0, 160.0 - w), rng.uniform(0.0, 160.0 - h));
            [x as f32, y as f32, (x + w) as f32, (y + h) as f32]
        })
        .collect()
}

/// One loss case: per image boxes, the sample, and random objectness and deltas.
struct LossCase {
    boxes: Vec<Vec<[f32; 4]>>,
    labels: Tensor,
    targets: Tensor,
    sampled: Tensor,
    objectness: Tensor,
    deltas: Tensor,
}

fn loss_case(rpn: &RpnCoder, seed: u64, kind: SamplerKind) -> LossCase {
    let mut rng = Rng::keyed(seed, &[kind as u64]);
    // An image with no ground truth, one with a single box, two busier ones.
    let boxes: Vec<Vec<[f32; 4]>> = [5, 0, 1, 25]
        .iter()
        .map(|&n| random_boxes(&mut rng, n))
        .collect();
    let (labels, targets) = rpn.label_batch(&boxes).unwrap();
    tch::manual_seed(seed as i64);
    let (n, a) = (boxes.len() as i64, rpn.num_anchors());
    let objectness = Tensor::randn([n, a], (Kind::Float, Device::Cpu)) * 2.0;
    // Deltas near the targets at positives (both Smooth-L1 branches), random elsewhere.
    let noise = Tensor::randn([n, a, 4], (Kind::Float, Device::Cpu)) * 0.2;
    let deltas = &targets + noise;
    let config = rpn.sampler_config(kind, seed);
    let sampled = sample_batch(&labels, Some(&objectness), &config, &[7]).unwrap();
    LossCase {
        boxes,
        labels,
        targets,
        sampled,
        objectness,
        deltas,
    }
}

fn rpn_loss_parity(device: Device, kind: SamplerKind, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let path = model("rpn_small.json");
    let (_, rpn) = load(&path);
    let case = loss_case(&rpn, seed, kind);
    let mut named: Vec<(String, Tensor)> = vec![
        ("objectness".into(), case.objectness.shallow_clone()),
        ("deltas".into(), case.deltas.shallow_clone()),
        ("sampled".into(), case.sampled.shallow_clone()),
    ];
    for (i, b) in case.boxes.iter().enumerate() {
        named.push((format!("boxes{i}"), ops::boxes_tensor(b)));
    }
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let case_path = dir.join("case.safetensors");
    tchcv::io::write_safetensors(&case_path, &refs).unwrap();
    let device_arg = if device == Device::Cpu { "cpu" } else { "cuda" };
    let case_arg = case_path.display().to_string();
    let extra = ["--case", case_arg.as_str(), "--device", device_arg];
    let (t, meta) = reference(&dir, "loss", &path, &extra);
    check_loss_against(&case, &t, &meta, device, what);
}

fn check_loss_against(case: &LossCase, t: &Tensors, meta: &Value, device: Device, what: &str) {
    assert_eq!(
        i64s(&case.labels),
        i64s(take(t, "labels")),
        "{what}: labels"
    );
    let pos = case.labels.eq(POSITIVE).nonzero();
    let at_pos = |x: &Tensor| x.index(&[Some(pos.select(1, 0)), Some(pos.select(1, 1))]);
    common::assert_close(
        &format!("{what}: regression targets at positives"),
        &at_pos(&case.targets),
        &at_pos(take(t, "regression_targets")),
        TARGET_RTOL,
        TARGET_ATOL,
    );
    let objectness = case.objectness.to_device(device).set_requires_grad(true);
    let deltas = case.deltas.to_device(device).set_requires_grad(true);
    let (targets, sampled) = (
        case.targets.to_device(device),
        case.sampled.to_device(device),
    );
    let out = RpnLoss::default()
        .forward(&RpnLossInputs {
            objectness: &objectness,
            deltas: &deltas,
            regression_targets: &targets,
            sampled_labels: &sampled,
        })
        .unwrap();
    assert_eq!(
        out.num_pos + out.num_neg,
        meta["num_sampled"].as_i64().unwrap()
    );
    out.total.backward();
    let stats = out.stats();
    for (name, got) in [
        ("loss_objectness", stats.cls_per_pos),
        ("loss_rpn_box_reg", stats.loc_per_pos),
    ] {
        let want = take(t, name).double_value(&[]);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-7,
            "{what}: {name}: tchcv {got} torchvision {want}"
        );
    }
    for (name, got) in [("grad_objectness", &objectness), ("grad_deltas", &deltas)] {
        let ctx = format!("{what}: {name}");
        common::assert_close(&ctx, &got.grad(), take(t, name), 1e-4, 1e-6);
    }
}

#[test]
fn rpn_loss_matches_torchvision_compute_loss_cpu() {
    rpn_loss_parity(Device::Cpu, SamplerKind::Random, "rpn_loss_random_cpu");
    rpn_loss_parity(Device::Cpu, SamplerKind::Hard, "rpn_loss_hard_cpu");
    rpn_loss_parity(Device::Cpu, SamplerKind::All, "rpn_loss_all_cpu");
}

#[test]
fn rpn_loss_matches_torchvision_compute_loss_cuda() {
    if let Some(device) = common::cuda_or_skip("rpn_loss_matches_torchvision_compute_loss_cuda") {
        rpn_loss_parity(device, SamplerKind::Random, "rpn_loss_random_cuda");
        rpn_loss_parity(device, SamplerKind::Hard, "rpn_loss_hard_cuda");
    }
}

// ---------------------------------------------------------------------------------------------
// Proposals
// ---------------------------------------------------------------------------------------------

fn proposals_parity(spec_path: &Path, train: bool, device: Device, what: &str) {
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let device_arg = if device == Device::Cpu { "cpu" } else { "cuda" };
    let mut extra = vec![
        "--seed",
        seed.as_str(),
        "--device",
        device_arg,
        "--images",
        "3",
    ];
    if train {
        extra.push("--train");
    }
    let (t, meta) = reference(&dir, "proposals", spec_path, &extra);
    let (_, rpn) = load(spec_path);
    let deltas = take(&t, "deltas").to_device(device);
    let objectness = take(&t, "objectness").to_device(device);
    let decoded = rpn.decode(&deltas).unwrap();
    common::assert_close(
        &format!("{what}: decoded"),
        &decoded,
        take(&t, "decoded"),
        1e-6,
        1e-4,
    );
    let config = rpn.proposal_config(train);
    let got = rpn.propose(&deltas, &objectness, &config).unwrap();
    let images = meta["images"].as_array().unwrap();
    assert_eq!(got.len(), images.len());
    let mut offset_agrees = 0;
    for (i, (p, m)) in got.iter().zip(images).enumerate() {
        let ctx = format!("{what}: image {i}");
        assert_eq!(p.boxes.device(), device, "{ctx}: device");
        assert_eq!(
            m["score_ties"], false,
            "{ctx}: tied scores make the order ambiguous"
        );
        assert_eq!(p.len() as u64, m["count"].as_u64().unwrap(), "{ctx}: count");
        assert!(p.len() <= config.post_nms_top_n, "{ctx}: post_nms_top_n");
        let boxes = take(&t, &format!("image{i}.boxes"));
        common::assert_close(&format!("{ctx}: boxes"), &p.boxes, boxes, 1e-6, 1e-4);
        let scores = take(&t, &format!("image{i}.scores"));
        common::assert_close(&format!("{ctx}: scores"), &p.scores, scores, 0.0, 1e-6);
        offset_agrees += usize::from(m["offset_nms_agrees"].as_bool() == Some(true));
    }
    eprintln!(
        "{what}: torchvision's own batched_nms (coordinate offsets where it uses them) agrees on \
         {offset_agrees} of {} images",
        images.len()
    );
}

#[test]
fn proposals_match_torchvision_filter_proposals_cpu() {
    proposals_parity(
        &model("rpn_small.json"),
        true,
        Device::Cpu,
        "rpn_prop_train",
    );
    proposals_parity(
        &model("rpn_small.json"),
        false,
        Device::Cpu,
        "rpn_prop_test",
    );
    let dir = common::scratch("rpn_prop_small_spec");
    let patch = json!({"rpn": {"pre_nms_top_n": {"train": 60, "test": 40},
                               "post_nms_top_n": {"train": 30, "test": 25},
                               "nms_threshold": 0.5, "score_threshold": 0.6, "min_size": 2.0}});
    let spec = patched_spec(&dir, patch);
    proposals_parity(&spec, true, Device::Cpu, "rpn_prop_small_train");
    proposals_parity(&spec, false, Device::Cpu, "rpn_prop_small_test");
    let dir = common::scratch("rpn_prop_odd_spec");
    proposals_parity(&odd_layout_spec(&dir), false, Device::Cpu, "rpn_prop_odd");
}

#[test]
fn proposals_match_torchvision_filter_proposals_cuda() {
    if let Some(device) = common::cuda_or_skip("proposals_match_torchvision_filter_proposals_cuda")
    {
        proposals_parity(
            &model("rpn_small.json"),
            true,
            device,
            "rpn_prop_train_cuda",
        );
        proposals_parity(
            &model("rpn_small.json"),
            false,
            device,
            "rpn_prop_test_cuda",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The sampler's properties (no Python)
// ---------------------------------------------------------------------------------------------

/// Labels of `images` random images (none, 0-29 boxes, or 150 small ones so that positives
/// exceed the positive quota), `[N, A]` i64.
fn random_labels(rpn: &RpnCoder, seed: u64, images: usize) -> Tensor {
    let mut rng = Rng::keyed(seed, &[1]);
    let sets: Vec<Vec<[f32; 4]>> = (0..images)
        .map(|i| {
            match i % 5 {
                0 => vec![],
                // Many small objects: more positives than the positive quota.
                1 => random_boxes_sized(&mut rng, 150, 0.06, 0.15),
                _ => {
                    let n = rng.below(30) as usize;
                    random_boxes(&mut rng, n)
                }
            }
        })
        .collect();
    rpn.label_batch(&sets).unwrap().0
}

fn count(labels: &[i64], which: i64) -> usize {
    labels.iter().filter(|&&l| l == which).count()
}

/// Sampled counts, bands and the per-image rule for one configuration.
fn check_sample(labels: &[i64], sampled: &[i64], config: &SamplerConfig, ctx: &str) {
    let (pos, neg) = (count(labels, POSITIVE), count(labels, NEGATIVE));
    let (want_pos, want_neg) = if config.kind == SamplerKind::All {
        (pos, neg)
    } else {
        let cap = (config.batch_size_per_image as f64 * config.positive_fraction).floor() as usize;
        let p = pos.min(cap);
        (p, neg.min(config.batch_size_per_image as usize - p))
    };
    assert_eq!(count(sampled, POSITIVE), want_pos, "{ctx}: positives");
    assert_eq!(count(sampled, NEGATIVE), want_neg, "{ctx}: negatives");
    assert_eq!(
        count(sampled, IGNORE),
        labels.len() - want_pos - want_neg,
        "{ctx}: others"
    );
    for (a, (&s, &l)) in sampled.iter().zip(labels).enumerate() {
        assert!(
            s == IGNORE || s == l,
            "{ctx}: anchor {a} labelled {l} sampled as {s}"
        );
    }
}

#[test]
fn sampler_counts_bands_and_determinism_on_random_images() {
    let seed = common::fresh_seed("rpn_sampler_properties");
    let (_, rpn) = load(&model("rpn_small.json"));
    let labels = random_labels(&rpn, seed, 60);
    let a = rpn.num_anchors() as usize;
    let host = i64s(&labels);
    assert!(
        host.chunks(a).any(|l| count(l, POSITIVE) > 128),
        "no image has more positives than the quota: the cap is untested"
    );
    let mut differs = 0;
    for (batch, fraction) in [(256, 0.5), (64, 0.25), (16, 1.0), (300, 0.0), (4000, 0.5)] {
        for kind in [SamplerKind::Random, SamplerKind::All] {
            let config = SamplerConfig {
                kind,
                batch_size_per_image: batch,
                positive_fraction: fraction,
                seed,
            };
            let sampled = i64s(&sample_batch(&labels, None, &config, &[3]).unwrap());
            for (i, (l, s)) in host.chunks(a).zip(sampled.chunks(a)).enumerate() {
                check_sample(l, s, &config, &format!("{config:?} image {i}"));
            }
            let again = i64s(&sample_batch(&labels, None, &config, &[3]).unwrap());
            assert_eq!(
                sampled, again,
                "{config:?}: the same seed gave another sample"
            );
            let other = SamplerConfig {
                seed: seed + 1,
                ..config.clone()
            };
            let other = i64s(&sample_batch(&labels, None, &other, &[3]).unwrap());
            differs += usize::from(other != sampled);
            if kind == SamplerKind::All {
                assert_eq!(sampled, host, "all: the sample is the labels");
            }
        }
    }
    assert!(
        differs >= 4,
        "another seed changed only {differs} random samples"
    );
}

/// Random negatives are uniform: over many images, the chosen negatives fall in the first half
/// of each image's negatives about half the time (not the lowest indices, not a fixed stride).
#[test]
fn random_negatives_are_spread_over_the_candidates() {
    let seed = common::fresh_seed("rpn_sampler_uniform");
    let (_, rpn) = load(&model("rpn_small.json"));
    let labels = random_labels(&rpn, seed, 40);
    let config = SamplerConfig {
        seed,
        ..SamplerConfig::default()
    };
    let sampled = i64s(&sample_batch(&labels, None, &config, &[]).unwrap());
    let a = rpn.num_anchors() as usize;
    let (mut first_half, mut total) = (0usize, 0usize);
    for (l, s) in i64s(&labels).chunks(a).zip(sampled.chunks(a)) {
        let negatives: Vec<usize> = (0..a).filter(|&i| l[i] == NEGATIVE).collect();
        let half = negatives.len() / 2;
        for (rank, &i) in negatives.iter().enumerate() {
            if s[i] == NEGATIVE {
                total += 1;
                first_half += usize::from(rank < half);
            }
        }
    }
    // 40 images x ~250 draws: the share's standard deviation is about 0.005.
    let share = first_half as f64 / total as f64;
    assert!(
        (share - 0.5).abs() < 0.03,
        "share in the first half {share}"
    );
}

#[test]
fn hard_sampler_picks_exactly_the_highest_loss_negatives() {
    let seed = common::fresh_seed("rpn_sampler_hard");
    let (_, rpn) = load(&model("rpn_small.json"));
    let labels = random_labels(&rpn, seed, 30);
    let (n, a) = (labels.size()[0], labels.size()[1]);
    tch::manual_seed(seed as i64);
    // Logits rounded to 1/8 so that many tie (ties go to the lower anchor index).
    let objectness = (Tensor::randn([n, a], (Kind::Float, Device::Cpu)) * 24.0).round() / 8.0;
    let bce = f32s(&objectness.binary_cross_entropy_with_logits::<Tensor>(
        &objectness.zeros_like(),
        None,
        None,
        Reduction::None,
    ));
    for (batch, fraction) in [(256, 0.5), (64, 0.25), (512, 0.1)] {
        let config = SamplerConfig {
            kind: SamplerKind::Hard,
            batch_size_per_image: batch,
            positive_fraction: fraction,
            seed,
        };
        let hard = i64s(&sample_batch(&labels, Some(&objectness), &config, &[]).unwrap());
        let random_config = SamplerConfig {
            kind: SamplerKind::Random,
            ..config.clone()
        };
        let random = i64s(&sample_batch(&labels, None, &random_config, &[]).unwrap());
        let host = i64s(&labels);
        for i in 0..n as usize {
            let r = i * a as usize..(i + 1) * a as usize;
            let ctx = format!("{config:?} image {i}");
            check_sample(&host[r.clone()], &hard[r.clone()], &config, &ctx);
            check_hardest(&host[r.clone()], &hard[r.clone()], &bce[r.clone()], &ctx);
            let positives =
                |s: &[i64]| -> Vec<usize> { (0..s.len()).filter(|&k| s[k] == POSITIVE).collect() };
            assert_eq!(
                positives(&hard[r.clone()]),
                positives(&random[r]),
                "{ctx}: hard must sample positives as random does"
            );
        }
    }
}

/// Every picked negative's loss is >= every unpicked negative's; at the boundary value, the
/// picked ones have the lower anchor indices.
fn check_hardest(labels: &[i64], sampled: &[i64], bce: &[f32], ctx: &str) {
    let negatives = (0..labels.len()).filter(|&k| labels[k] == NEGATIVE);
    let (picked, left): (Vec<usize>, Vec<usize>) = negatives.partition(|&k| sampled[k] == NEGATIVE);
    let (Some(&low), Some(&high)) = (
        picked.iter().min_by(|&&x, &&y| bce[x].total_cmp(&bce[y])),
        left.iter().max_by(|&&x, &&y| bce[x].total_cmp(&bce[y])),
    ) else {
        return;
    };
    assert!(
        bce[low] >= bce[high],
        "{ctx}: a negative of loss {} left for one of {}",
        bce[high],
        bce[low]
    );
    if bce[low] == bce[high] {
        let last_tied_pick = picked
            .iter()
            .filter(|&&k| bce[k] == bce[low])
            .max()
            .unwrap();
        let first_tied_left = left.iter().filter(|&&k| bce[k] == bce[low]).min().unwrap();
        assert!(
            last_tied_pick < first_tied_left,
            "{ctx}: ties must go to the lower index"
        );
    }
}

#[test]
fn image_without_ground_truth_gives_only_negatives_and_a_finite_loss() {
    let (_, rpn) = load(&model("rpn_small.json"));
    let t = rpn.label(&[]).unwrap();
    assert_eq!(count(&t.labels, NEGATIVE), t.labels.len());
    assert!(t.max_iou.iter().all(|&v| v == 0.0));
    // Degenerate boxes only: the same, and reported.
    let t2 = rpn
        .label(&[[10.0, 10.0, 10.0, 40.0], [5.0, 9.0, 50.0, 2.0]])
        .unwrap();
    assert_eq!(t2.labels, t.labels);
    assert_eq!(t2.dropped, vec![0, 1]);
    let config = SamplerConfig::default();
    let sampled = sample_image(&t.labels, None, &config, &mut config.rng(&[], 0)).unwrap();
    assert_eq!(
        (count(&sampled, POSITIVE), count(&sampled, NEGATIVE)),
        (0, 256)
    );
    let a = rpn.num_anchors();
    tch::manual_seed(11);
    let objectness = Tensor::randn([1, a], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let deltas = Tensor::randn([1, a, 4], (Kind::Float, Device::Cpu)) * 1e3;
    let sampled = Tensor::from_slice(&sampled).view([1, a]);
    let targets = t.regression_targets_tensor().unsqueeze(0);
    let out = RpnLoss::default()
        .forward(&RpnLossInputs {
            objectness: &objectness,
            deltas: &deltas,
            regression_targets: &targets,
            sampled_labels: &sampled,
        })
        .unwrap();
    let stats = out.stats();
    assert!(stats.total.is_finite() && stats.total > 0.0, "{stats:?}");
    assert_eq!((stats.num_pos, stats.num_neg, stats.loc_sum), (0, 256, 0.0));
    // The objectness part is the mean BCE over the 256 sampled negatives.
    let keep = sampled.eq(NEGATIVE);
    let want = objectness
        .masked_select(&keep)
        .binary_cross_entropy_with_logits::<Tensor>(
            &Tensor::zeros([256], (Kind::Float, Device::Cpu)),
            None,
            None,
            Reduction::Mean,
        )
        .double_value(&[]);
    assert!(
        (stats.cls_per_pos - want).abs() <= 1e-6 * want,
        "{} vs {want}",
        stats.cls_per_pos
    );
    out.total.backward();
    assert!(f32s(&objectness.grad()).iter().all(|g| g.is_finite()));
    // Nothing sampled at all: 0, not torchvision's NaN.
    let none = Tensor::full([1, a], IGNORE, (Kind::Int64, Device::Cpu));
    let out = RpnLoss::default()
        .forward(&RpnLossInputs {
            objectness: &objectness,
            deltas: &deltas,
            regression_targets: &targets,
            sampled_labels: &none,
        })
        .unwrap();
    assert_eq!(out.stats().total, 0.0);
}

/// A GT that overlaps no anchor takes no low-quality match (torchvision would turn every anchor
/// of IoU 0 positive); a GT inside the image always gets at least one positive.
#[test]
fn best_anchors_of_every_ground_truth_are_positive_and_none_outside() {
    let seed = common::fresh_seed("rpn_low_quality");
    let (_, rpn) = load(&model("rpn_small.json"));
    let mut rng = Rng::keyed(seed, &[2]);
    for _ in 0..200 {
        let count = 1 + rng.below(8) as usize;
        let boxes = random_boxes(&mut rng, count);
        let t = rpn.label(&boxes).unwrap();
        for b in &boxes {
            // The anchors of this box's best IoU are positive (for some box: torchvision's
            // low-quality rule gives them their own best GT).
            let alone = rpn.label(&[*b]).unwrap().max_iou;
            let top = alone.iter().copied().fold(0.0, f32::max);
            assert!(top > 0.0, "{b:?} overlaps no anchor");
            for (a, &v) in alone.iter().enumerate() {
                if v == top {
                    assert_eq!(t.labels[a], POSITIVE, "best anchor {a} of {b:?}");
                }
            }
        }
    }
    let t = rpn.label(&[[2000.0, 2000.0, 2050.0, 2040.0]]).unwrap();
    assert_eq!(count(&t.labels, POSITIVE), 0);
}

#[test]
fn rpn_small_covers_demo_object_sizes() {
    let (_, rpn) = load(&model("rpn_small.json"));
    let mut rng = Rng::new(5);
    let boxes = random_boxes(&mut rng, 1000);
    let (mut good, mut worst) = (0, 1.0f32);
    for b in &boxes {
        let best = rpn
            .label(&[*b])
            .unwrap()
            .max_iou
            .into_iter()
            .fold(0.0, f32::max);
        good += usize::from(best >= 0.5);
        worst = worst.min(best);
    }
    assert!(
        good >= 950,
        "only {good}/1000 objects have an anchor at IoU >= 0.5"
    );
    assert!(worst >= 0.4, "an object's best anchor IoU is {worst}");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

fn assert_bad<T: std::fmt::Debug>(result: anyhow::Result<T>, want: &[&str]) {
    let err = result.expect_err("should be rejected");
    let msg = format!("{err:#}");
    assert!(tchcv::is_bad_input(&err), "not bad input: {msg}");
    for w in want {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

#[test]
fn sampler_shape_dtype_and_value_errors_are_named() {
    let labels = Tensor::from_slice(&[1i64, 0, -1, 0, 1, 0]).view([2, 3]);
    let cfg = SamplerConfig::default();
    let hard = SamplerConfig {
        kind: SamplerKind::Hard,
        ..cfg.clone()
    };
    let float_labels = labels.to_kind(Kind::Float);
    assert_bad(
        sample_batch(&float_labels, None, &cfg, &[]),
        &["labels", "int64"],
    );
    assert_bad(
        sample_batch(&labels.view(-1), None, &cfg, &[]),
        &["labels", "[N, A]"],
    );
    let two = Tensor::from_slice(&[1i64, 2, 0]).view([1, 3]);
    assert_bad(
        sample_batch(&two, None, &cfg, &[]),
        &["image 0", "labels[1]: 2"],
    );
    assert_bad(
        sample_batch(&labels, None, &hard, &[]),
        &["hard", "objectness"],
    );
    let wrong = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
    assert_bad(
        sample_batch(&labels, Some(&wrong), &hard, &[]),
        &["objectness", "[2, 3]"],
    );
    let nan = Tensor::from_slice(&[0.0f32, f32::NAN, 1.0, 0.0, 0.0, 0.0]).view([2, 3]);
    assert_bad(
        sample_batch(&labels, Some(&nan), &hard, &[]),
        &["objectness", "NaN"],
    );
    let ints = labels.shallow_clone();
    assert_bad(
        sample_batch(&labels, Some(&ints), &hard, &[]),
        &["objectness", "float"],
    );
    let bad_fraction = SamplerConfig {
        positive_fraction: 1.5,
        ..cfg.clone()
    };
    assert_bad(
        sample_batch(&labels, None, &bad_fraction, &[]),
        &["positive_fraction"],
    );
    assert_bad(negative_bce(&ints), &["objectness"]);
    assert_bad("sometimes".parse::<SamplerKind>(), &["random, hard or all"]);
}

#[test]
fn loss_shape_dtype_and_value_errors_are_named() {
    let (n, a) = (2, 5);
    let f = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
    let (obj, deltas, targets) = (f(&[n, a]), f(&[n, a, 4]), f(&[n, a, 4]));
    let labels = Tensor::from_slice(&[1i64, 0, -1, 0, 0, -1, -1, 1, 0, 0]).view([n, a]);
    let loss = RpnLoss::default();
    let run = |o: &Tensor, d: &Tensor, t: &Tensor, l: &Tensor| {
        loss.forward(&RpnLossInputs {
            objectness: o,
            deltas: d,
            regression_targets: t,
            sampled_labels: l,
        })
    };
    assert!(run(&obj, &deltas, &targets, &labels).is_ok());
    assert_bad(
        run(&f(&[n, a, 1]), &deltas, &targets, &labels),
        &["objectness", "[N, A]"],
    );
    assert_bad(
        run(&obj, &f(&[n, a, 3]), &targets, &labels),
        &["deltas", "[2, 5, 4]"],
    );
    assert_bad(
        run(&obj, &deltas, &f(&[n, a]), &labels),
        &["regression_targets"],
    );
    let int_obj = obj.to_kind(Kind::Int64);
    assert_bad(
        run(&int_obj, &deltas, &targets, &labels),
        &["objectness", "float"],
    );
    let int32 = labels.to_kind(Kind::Int);
    assert_bad(
        run(&obj, &deltas, &targets, &int32),
        &["sampled_labels", "int64"],
    );
    let three = labels.where_scalarother(&labels.ne(-1), 3);
    assert_bad(
        run(&obj, &deltas, &targets, &three),
        &["sampled_labels", "not 1, 0 or -1"],
    );
    // NaN at a sampled anchor is an error; at an anchor not sampled it is never read.
    let nan_at = |i: i64| {
        obj.view(-1)
            .index_fill(0, &Tensor::from_slice(&[i]), f64::NAN)
            .view([n, a])
    };
    assert_bad(
        run(&nan_at(1), &deltas, &targets, &labels),
        &["objectness", "NaN or inf"],
    );
    let out = run(&nan_at(2), &deltas, &targets, &labels).unwrap();
    assert!(out.stats().total.is_finite());
    let inf_target = targets.index_fill(1, &Tensor::from_slice(&[0i64]), f64::INFINITY);
    assert_bad(
        run(&obj, &deltas, &inf_target, &labels),
        &["regression_targets", "NaN or inf"],
    );
    assert_bad(
        RpnLoss::new(RpnLossConfig {
            beta: -1.0,
            check_finite: true,
        }),
        &["beta"],
    );
}

#[test]
fn proposal_input_errors_are_named() {
    let (_, rpn) = load(&model("rpn_small.json"));
    let a = rpn.num_anchors();
    let boxes = Tensor::zeros([1, a, 4], (Kind::Float, Device::Cpu));
    let obj = Tensor::zeros([1, a], (Kind::Float, Device::Cpu));
    let levels = rpn.anchors_per_level().to_vec();
    let cfg = ProposalConfig::default();
    let ok = filter_proposals(&boxes, &obj, &levels, &[[160, 160]], &cfg).unwrap();
    assert_eq!(ok.len(), 1);
    assert!(
        ok[0].is_empty(),
        "zero-size boxes must all be removed by min_size"
    );
    let short = obj.narrow(1, 0, a - 1);
    assert_bad(
        filter_proposals(&boxes, &short, &levels, &[[160, 160]], &cfg),
        &["objectness"],
    );
    assert_bad(
        filter_proposals(&boxes, &obj, &levels[1..], &[[160, 160]], &cfg),
        &["anchors_per_level"],
    );
    assert_bad(
        filter_proposals(&boxes, &obj, &levels, &[], &cfg),
        &["image_sizes"],
    );
    assert_bad(
        filter_proposals(&boxes.narrow(2, 0, 3), &obj, &levels, &[[160, 160]], &cfg),
        &["proposals", "[N, A, 4]"],
    );
    let bad = ProposalConfig {
        pre_nms_top_n: 0,
        ..cfg
    };
    assert_bad(
        filter_proposals(&boxes, &obj, &levels, &[[160, 160]], &bad),
        &["pre_nms_top_n"],
    );
    assert_bad(
        rpn.label(&[[0.0, f32::NAN, 3.0, 4.0]]),
        &["ground truth box 0", "non-finite"],
    );
}

/// The training loss (`LossKind::Rpn`) of `case` at call `call` with `options`.
fn training_loss_at(case: &LossCase, rows: &[i64], options: Value, call: u64) -> LossSums {
    let loss = LossKind::Rpn.build(options).unwrap();
    loss.set_calls(call);
    let rows = Tensor::from_slice(rows);
    let pick = |t: &Tensor| t.index_select(0, &rows);
    let (deltas, targets) = (pick(&case.deltas), pick(&case.targets));
    let (objectness, labels) = (pick(&case.objectness).unsqueeze(2), pick(&case.labels));
    let inputs = LossInputs {
        loc_preds: &deltas,
        loc_targets: &targets,
        cls_preds: &objectness,
        cls_targets: &labels,
    };
    loss.sums(&inputs).unwrap()
}

/// What the training loss must give at `call`: [`RpnLoss`] on `sample_batch`'s sample (images
/// keyed 0..N, the step as the key).
fn sample_then_loss(
    rpn: &RpnCoder,
    case: &LossCase,
    kind: SamplerKind,
    seed: u64,
    call: u64,
) -> LossSums {
    let config = rpn.sampler_config(kind, seed);
    let sampled = sample_batch(&case.labels, Some(&case.objectness), &config, &[call]).unwrap();
    RpnLoss::default()
        .sums(&RpnLossInputs {
            objectness: &case.objectness,
            deltas: &case.deltas,
            regression_targets: &case.targets,
            sampled_labels: &sampled,
        })
        .unwrap()
}

/// Ranks 0 and 1 of 2 (rank r takes images r, r + 2: the loader's sharding) together give
/// `whole`, the sums of one process with every image.
fn check_two_ranks_sum_to(
    case: &LossCase,
    options: &Value,
    call: u64,
    whole: &LossSums,
    ctx: &str,
) {
    let images = case.boxes.len() as i64;
    let ranks: Vec<LossSums> = (0..2u64)
        .map(|r| {
            let mut o = options.clone();
            o["rank"] = json!(r);
            o["world_size"] = json!(2);
            let rows: Vec<i64> = (r as i64..images).step_by(2).collect();
            training_loss_at(case, &rows, o, call)
        })
        .collect();
    let total = |f: &dyn Fn(&LossSums) -> f64| ranks.iter().map(f).sum::<f64>();
    assert_eq!(
        total(&|s| s.num_pos as f64),
        whole.num_pos as f64,
        "{ctx}: ranks"
    );
    assert_eq!(
        total(&|s| s.num_neg as f64),
        whole.num_neg as f64,
        "{ctx}: ranks"
    );
    let loc = |s: &LossSums| s.loc_sum.double_value(&[]);
    let cls = |s: &LossSums| s.cls_sum.double_value(&[]);
    for part in [&loc as &dyn Fn(&LossSums) -> f64, &cls] {
        let (one, two) = (part(whole), total(part));
        assert!(
            (one - two).abs() <= 1e-5 * one.abs().max(1.0),
            "{ctx}: {one} vs {two}"
        );
    }
}

#[test]
fn the_training_loss_samples_per_step_and_image_and_ranks_share_the_global_sample() {
    // LossKind::Rpn = the sampler (keyed by the call and the image's place in the global
    // batch) + RpnLoss, normalised by the sample; two ranks of a data-parallel run together
    // sample and sum what one process with the whole batch does.
    let seed = common::fresh_seed("rpn training loss");
    let (_, rpn) = load(&model("rpn_small.json"));
    let sampled_only = Normalization {
        min: 1.0,
        strict: false,
    };
    for kind in [SamplerKind::Random, SamplerKind::Hard, SamplerKind::All] {
        let case = loss_case(&rpn, seed, kind);
        let options = json!({"sampler": kind, "seed": seed});
        let all: Vec<i64> = (0..case.boxes.len() as i64).collect();
        for call in [0u64, 1, 5] {
            let got = training_loss_at(&case, &all, options.clone(), call);
            let want = sample_then_loss(&rpn, &case, kind, seed, call);
            let ctx = format!("{kind:?} call {call}");
            assert_eq!(
                (got.num_pos, got.num_neg),
                (want.num_pos, want.num_neg),
                "{ctx}"
            );
            assert_eq!(
                got.num_valid,
                got.num_pos + got.num_neg,
                "{ctx}: the sample"
            );
            for (a, b) in [(&got.loc_sum, &want.loc_sum), (&got.cls_sum, &want.cls_sum)] {
                assert_eq!(a.double_value(&[]), b.double_value(&[]), "{ctx}");
            }
            let global =
                global_normalizer_by(None, &got, sampled_only, NormalizeBy::Sampled).unwrap();
            assert_eq!(
                global.normalizer, got.num_valid as f64,
                "{ctx}: D = the sample"
            );
            check_two_ranks_sum_to(&case, &options, call, &got, &ctx);
        }
        if kind == SamplerKind::Random {
            let a = training_loss_at(&case, &all, options.clone(), 0);
            let b = training_loss_at(&case, &all, options.clone(), 1);
            let mask = |s: &LossSums| s.neg_mask.as_ref().unwrap().shallow_clone();
            assert!(!mask(&a).equal(&mask(&b)), "each call draws a new sample");
        }
    }
}

#[test]
fn the_training_loss_names_what_does_not_fit() {
    let (_, rpn) = load(&model("rpn_small.json"));
    let case = loss_case(&rpn, 3, SamplerKind::Random);
    let loss = LossKind::Rpn.build(json!({})).unwrap();
    let two_columns = Tensor::zeros([4, rpn.num_anchors(), 2], (Kind::Float, Device::Cpu));
    let err = loss
        .sums(&LossInputs {
            loc_preds: &case.deltas,
            loc_targets: &case.targets,
            cls_preds: &two_columns,
            cls_targets: &case.labels,
        })
        .unwrap_err();
    assert!(tchcv::is_bad_input(&err), "{err:#}");
    assert!(format!("{err:#}").contains("cls_preds"), "{err:#}");
    let err = LossKind::Rpn
        .build(json!({"rank": 2, "world_size": 2}))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("rank 2 of world_size 2"),
        "{err:#}"
    );
}

#[test]
fn the_rpn_network_gives_deltas_and_objectness_in_anchor_order() {
    // One objectness column whatever the classes, one row per anchor of `tchcv anchors`, and
    // proposals from the network's outputs (the head's parity with torchvision's RPNHead is in
    // tests/models_parity.rs).
    let spec = ModelSpec::load(&model("rpn_small.json")).unwrap();
    let rpn = RpnCoder::from_spec(&spec).unwrap();
    for classes in [1, 20] {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let net = tchcv::models::build(vs.root(), &spec, classes).unwrap();
        let images = Tensor::randn([2, 3, 160, 160], (Kind::Float, Device::Cpu));
        let (deltas, objectness) = tch::no_grad(|| net.forward_t(&images, false)).unwrap();
        assert_eq!(deltas.size(), [2, rpn.num_anchors(), 4]);
        assert_eq!(objectness.size(), [2, rpn.num_anchors(), 1]);
        let proposals = rpn
            .propose(
                &deltas,
                &objectness.squeeze_dim(2),
                &rpn.proposal_config(false),
            )
            .unwrap();
        assert_eq!(proposals.len(), 2);
        assert!(proposals[0].boxes.size()[0] > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// tchcv sample
// ---------------------------------------------------------------------------------------------

fn tchcv(args: &[&str]) -> Output {
    Command::new(common::tchcv_bin())
        .args(args)
        .current_dir(common::repo())
        .output()
        .expect("run tchcv")
}

fn tchcv_ok(args: &[&str]) -> String {
    let out = tchcv(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tchcv {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_exit_2(args: &[&str], want: &[&str]) {
    let out = tchcv(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "tchcv {args:?}: {stderr}");
    for w in want {
        assert!(stderr.contains(w), "{stderr:?} lacks {w:?}");
    }
}

const IMAGE_BOXES: &str = r#"{"boxes": [[40, 30, 200, 170], [250, 100, 310, 230], [5, 5, 5, 40]],
    "labels": [2, 0, 7], "image_size": [320, 240]}"#;

/// The library's labels and sample for [`IMAGE_BOXES`] (scaled to 160x160).
fn library_sample(
    rpn: &RpnCoder,
    kind: SamplerKind,
    seed: u64,
    loss: Option<&[f32]>,
) -> (Vec<i64>, Vec<f32>) {
    let raw = [
        [40.0, 30.0, 200.0, 170.0],
        [250.0, 100.0, 310.0, 230.0],
        [5.0, 5.0, 5.0, 40.0],
    ];
    let boxes = ops::scale_boxes(&raw, [320.0, 240.0], [160.0, 160.0]).unwrap();
    let t = rpn.label(&boxes).unwrap();
    let config = rpn.sampler_config(kind, seed);
    let sampled = sample_image(&t.labels, loss, &config, &mut config.rng(&[], 0)).unwrap();
    (sampled, t.max_iou)
}

#[test]
fn sample_cli_writes_the_library_sample_in_anchor_order() {
    let dir = common::scratch("rpn_cli_sample");
    let boxes = dir.join("boxes.json");
    std::fs::write(&boxes, IMAGE_BOXES).unwrap();
    let (boxes, spec) = (boxes.display().to_string(), "models/rpn_small.json");
    let (_, rpn) = load(&model("rpn_small.json"));
    let out = |name: &str| dir.join(name).display().to_string();
    let run = |seed: &str, file: &str, extra: &[&str]| {
        let mut args = vec!["sample", "--model", spec, "--boxes", &boxes, "--seed", seed];
        args.extend_from_slice(&["--out", file]);
        args.extend_from_slice(extra);
        let stdout = tchcv_ok(&args);
        (stdout, common::read_safetensors(Path::new(file)))
    };
    let (stdout, t) = run("5", &out("a.safetensors"), &[]);
    assert!(stdout.contains("box 2: dropped"), "{stdout}");
    let (want, max_iou) = library_sample(&rpn, SamplerKind::Random, 5, None);
    assert_eq!(i64s(&t["labels"]), want);
    assert_eq!(t["labels"].kind(), Kind::Int64);
    assert_eq!(t["max_iou"].kind(), Kind::Float);
    assert_eq!(f32s(&t["max_iou"]), max_iou);
    assert!(stdout.contains(&format!(
        "{} positive, {} negative",
        count(&want, 1),
        count(&want, 0)
    )));
    // Same seed, same file; another seed, another sample.
    let (_, again) = run("5", &out("b.safetensors"), &[]);
    assert!(again["labels"].equal(&t["labels"]));
    let (_, other) = run("6", &out("c.safetensors"), &[]);
    assert!(!other["labels"].equal(&t["labels"]));
    // The order of `tchcv anchors`: its cxcywh anchors are the library's.
    let anchors = out("anchors.safetensors");
    tchcv_ok(&["anchors", "--model", spec, "--out", &anchors]);
    let written = common::read_safetensors(Path::new(&anchors));
    assert!(written["anchors"].equal(&rpn.host_anchors().to_tensor()));
    assert_eq!(written["anchors"].size()[0], t["labels"].size()[0]);
    // hard, with objectness from a file.
    tch::manual_seed(3);
    let logits = Tensor::randn([rpn.num_anchors()], (Kind::Float, Device::Cpu));
    let logits_path = out("objectness.safetensors");
    tchcv::io::write_safetensors(Path::new(&logits_path), &[("objectness", &logits)]).unwrap();
    let hard_args = ["--sampler", "hard", "--objectness", logits_path.as_str()];
    let (_, hard) = run("5", &out("d.safetensors"), &hard_args);
    let loss = negative_bce(&logits.view([1, -1])).unwrap();
    let (want, _) = library_sample(&rpn, SamplerKind::Hard, 5, Some(&loss));
    assert_eq!(i64s(&hard["labels"]), want);
}

#[test]
fn sample_cli_bad_input_exits_2_naming_the_field() {
    let dir = common::scratch("rpn_cli_sample_bad");
    let write = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let good = write("good.json", IMAGE_BOXES);
    let out = dir.join("o.safetensors").display().to_string();
    fn base(boxes: &str) -> Vec<&str> {
        vec![
            "sample",
            "--model",
            "models/rpn_small.json",
            "--boxes",
            boxes,
        ]
    }
    let mut args = base(&good);
    args.extend(["--sampler", "hard", "--out", &out]);
    assert_exit_2(&args, &["--sampler hard", "--objectness"]);
    let short = dir.join("short.safetensors");
    tchcv::io::write_safetensors(
        &short,
        &[(
            "objectness",
            &Tensor::zeros([7], (Kind::Float, Device::Cpu)),
        )],
    )
    .unwrap();
    let short = short.display().to_string();
    let mut args = base(&good);
    args.extend(["--sampler", "hard", "--objectness", &short, "--out", &out]);
    assert_exit_2(&args, &["short.safetensors: objectness: expected [3204]"]);
    let mismatch = write(
        "mismatch.json",
        r#"{"boxes": [[1, 2, 30, 40]], "labels": [0, 1], "image_size": [160, 160]}"#,
    );
    let mut args = base(&mismatch);
    args.extend(["--out", &out]);
    assert_exit_2(&args, &["mismatch.json: labels: 2 labels for 1 boxes"]);
    let zero = write(
        "zero.json",
        r#"{"boxes": [], "labels": [], "image_size": [0, 160]}"#,
    );
    let mut args = base(&zero);
    args.extend(["--out", &out]);
    assert_exit_2(&args, &["zero.json: image_size"]);
    let arity = write(
        "arity.json",
        r#"{"boxes": [[1, 2, 3]], "labels": [0], "image_size": [9, 9]}"#,
    );
    let mut args = base(&arity);
    args.extend(["--out", &out]);
    assert_exit_2(&args, &["arity.json"]);
    let bad_spec = write(
        "bad_spec.json",
        r#"{"name": "x", "input_size": [160, 160], "backbone": "small", "head": "rpn",
            "anchors": {"style": "torchvision", "feature_maps": [20, 10], "sizes": [[16]],
                        "aspect_ratios": [1.0]}}"#,
    );
    let args = [
        "sample", "--model", &bad_spec, "--boxes", &good, "--out", &out,
    ];
    assert_exit_2(&args, &["bad_spec.json: anchors.sizes: expected 2 values"]);
}
