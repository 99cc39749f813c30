//! Faster R-CNN end to end: the whole model against torchvision's `fasterrcnn_resnet50_fpn`
//! (random weights through `scripts/convert_weights.py --with-roi-heads`, eval mode, images at
//! the network's input size so torchvision's transform is an identity), and the training
//! forward's second stage: `all` takes every labelled proposal, OHEM exactly the top B by loss
//! after the NMS, and the sampler's draw is keyed by the image's place in the global batch.

mod common;

use std::path::Path;

use common::detections::{assert_same_detections, Detection, DetectionTolerance};
use serde_json::{json, Value};
use tch::{nn, Device, Kind, Tensor};
use tchcv::bbox::ops;
use tchcv::bbox::rcnn::BatchTruth;
use tchcv::bbox::rcnn::{ohem_select, RoiSamplerConfig, RoiSamplerKind};
use tchcv::loss::{RcnnLoss, RcnnLossConfig, RcnnLossInputs};
use tchcv::models::faster_rcnn::{FasterRcnn, TwoStageOutputs};
use tchcv::models::{build, load_init, Detector, InitWeights};
use tchcv::spec::ModelSpec;

const CPU: Device = Device::Cpu;
/// The parity case's image side (a multiple of 32: torchvision pads to that).
const SIZE: i64 = 320;

fn model_json(name: &str) -> Value {
    let path = common::repo().join("models").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// models/faster_rcnn_r50_fpn.json at a `SIZE` x `SIZE` input (P2-P6: 80, 40, 20, 10, 5).
fn r50_spec_at_size() -> ModelSpec {
    let mut spec = model_json("faster_rcnn_r50_fpn.json");
    spec["input_size"] = json!([SIZE, SIZE]);
    let maps: Vec<i64> = (2..7).map(|l| SIZE >> l).collect();
    spec["anchors"]["feature_maps"] = json!(maps);
    spec.as_object_mut().unwrap().remove("num_anchors");
    ModelSpec::from_json_str(&spec.to_string(), "faster_rcnn_r50_fpn at 320").unwrap()
}

/// A random torchvision fasterrcnn_resnet50_fpn and its eval-mode case (two images): returns
/// the converted whole-model weights and the case's tensors.
fn torchvision_case(
    dir: &Path,
    seed: u64,
) -> (
    std::path::PathBuf,
    std::collections::HashMap<String, Tensor>,
) {
    let (pth, raw, case) = (
        dir.join("tv.pth"),
        dir.join("tv.safetensors"),
        dir.join("case.safetensors"),
    );
    let size = SIZE.to_string();
    let seed = seed.to_string();
    common::run_reference(
        "torchvision_random.py",
        &[
            "--arch",
            "fasterrcnn_resnet50_fpn",
            "--seed",
            &seed,
            "--pth",
            pth.to_str().unwrap(),
            "--safetensors",
            raw.to_str().unwrap(),
            "--frcnn-case",
            case.to_str().unwrap(),
            "--size",
            &size,
            "--images",
            "2",
        ],
    );
    let weights = dir.join("frcnn.safetensors");
    let out = std::process::Command::new(common::python())
        .arg(common::repo().join("scripts/convert_weights.py"))
        .args(["--arch", "fasterrcnn_resnet50_fpn", "--with-roi-heads"])
        .arg(&pth)
        .arg(&weights)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "convert_weights.py --with-roi-heads: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (weights, common::read_safetensors(&case))
}

fn whole_model_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let (weights, case) = torchvision_case(&dir, seed);
    let spec = r50_spec_at_size();
    let vs = nn::VarStore::new(device);
    // torchvision's COCO layout: 90 classes and the background.
    let model = build(vs.root(), &spec, 90).unwrap();
    let loaded = load_init(&vs, &spec, &weights).unwrap();
    assert_eq!(
        loaded,
        InitWeights::Model(vs.variables().len()),
        "the converted file is the whole model"
    );
    let frcnn = model.two_stage().expect("a two-stage detector");
    let images = case["images"].to_device(device);
    let proposals = frcnn.propose(&images).unwrap();
    let detections = frcnn.detect(&images).unwrap();
    for (i, (p, d)) in proposals.iter().zip(&detections).enumerate() {
        let ctx = format!("{what}: image {i}");
        let want = &case[&format!("proposals_{i}")];
        assert_eq!(p.size(), want.size(), "{ctx}: proposal count");
        let in_order = common::max_abs_diff(&p.to_device(CPU), want);
        eprintln!(
            "{ctx}: {} proposals, max |diff| in order {in_order:.3e} px",
            want.size()[0]
        );
        assert_same_boxes(&p.to_device(CPU), want, &format!("{ctx}: proposals"));
        let want = Detection::all(
            &case[&format!("boxes_{i}")],
            &case[&format!("scores_{i}")],
            &case[&format!("labels_{i}")],
        );
        // tchcv's classes are 0-based: torchvision's label - 1.
        let got = Detection::all(&d.boxes, &d.scores, &(&d.labels + 1));
        assert!(!want.is_empty(), "{ctx}: no detections to compare");
        let tolerance = DetectionTolerance {
            box_rtol: 1e-4,
            box_atol: 2e-3,
            score_rtol: 1e-4,
            score_atol: 1e-6,
            tie_rtol: 1e-4,
            tail_rtol: 1e-4,
        };
        assert_same_detections(&got, &want, &tolerance, &ctx);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g.score - w.score).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{ctx}: {} detections, max |score diff| in order {worst:.3e}",
            got.len()
        );
    }
}

/// The same boxes (`[P, 4]`), each within 1e-4 relative + 2e-3 px of one of `want`'s: in any
/// order, since proposals of equal score (a saturated sigmoid) may come in either order.
fn assert_same_boxes(got: &Tensor, want: &Tensor, ctx: &str) {
    let (g, w) = (
        ops::host_boxes(got).unwrap(),
        ops::host_boxes(want).unwrap(),
    );
    let close = |a: &[f32; 4], b: &[f32; 4]| {
        (0..4).all(|c| (a[c] - b[c]).abs() <= 1e-4 * b[c].abs() + 2e-3)
    };
    let mut used = vec![false; w.len()];
    for (i, b) in g.iter().enumerate() {
        // The same position first (the usual case), else any unused one.
        let j = (i < w.len() && !used[i] && close(b, &w[i]))
            .then_some(i)
            .or_else(|| (0..w.len()).find(|&j| !used[j] && close(b, &w[j])));
        let Some(j) = j else {
            panic!(
                "{ctx}: box {i} {b:?} is not torchvision's (at {i}: {:?})",
                w.get(i)
            );
        };
        used[j] = true;
    }
}

#[test]
fn whole_faster_rcnn_matches_torchvision_in_eval_mode_cpu() {
    whole_model_parity(CPU, "faster_rcnn_whole_cpu");
}

#[test]
fn whole_faster_rcnn_matches_torchvision_in_eval_mode_cuda() {
    if let Some(device) = common::cuda_or_skip("whole_faster_rcnn_matches_torchvision_cuda") {
        whole_model_parity(device, "faster_rcnn_whole_cuda");
    }
}

// ---------------------------------------------------------------------------------------------
// The training forward's second stage
// ---------------------------------------------------------------------------------------------

/// models/faster_rcnn_small.json without batch norm (so a batch's images do not depend on each
/// other) for 5 classes, its variables on the CPU.
fn small_model(vs: &nn::VarStore) -> Box<dyn Detector> {
    let mut spec = model_json("faster_rcnn_small.json");
    spec["network"] = json!({"bn": false});
    let spec = ModelSpec::from_json_str(&spec.to_string(), "faster_rcnn_small, no bn").unwrap();
    build(vs.root(), &spec, 5).unwrap()
}

/// Two images with a few objects each (model-input pixels) and random pixels.
/// Images `[N, 3, H, W]`, and per image boxes, 0-based labels and crowd flags.
type SmallBatch = (Tensor, Vec<Vec<[f32; 4]>>, Vec<Vec<i64>>, Vec<Vec<bool>>);

fn small_batch(seed: i64) -> SmallBatch {
    tch::manual_seed(seed);
    let images = Tensor::randn([2, 3, 160, 160], (Kind::Float, CPU));
    let boxes = vec![
        vec![[10.0, 12.0, 60.0, 70.0], [80.0, 90.0, 150.0, 140.0]],
        vec![
            [30.0, 20.0, 90.0, 100.0],
            [5.0, 100.0, 40.0, 150.0],
            [100.0, 10.0, 155.0, 60.0],
        ],
    ];
    let labels = vec![vec![0, 3], vec![1, 4, 2]];
    let crowd = vec![vec![false; 2], vec![false, false, true]];
    (images, boxes, labels, crowd)
}

fn sampler(kind: RoiSamplerKind) -> RoiSamplerConfig {
    RoiSamplerConfig {
        kind,
        ohem_per_image: 16,
        ..RoiSamplerConfig::default()
    }
}

#[test]
fn all_takes_every_labelled_proposal_and_ohem_the_top_b_after_nms() {
    let vs = nn::VarStore::new(CPU);
    let model = small_model(&vs);
    let frcnn: &FasterRcnn = model.two_stage().unwrap();
    let (images, boxes, labels, crowd) = small_batch(3);
    let truth = BatchTruth {
        boxes: &boxes,
        labels: &labels,
        crowd: &crowd,
    };
    let loss = RcnnLoss::new(RcnnLossConfig::default()).unwrap();
    let forward = |kind| {
        tch::no_grad(|| frcnn.forward_train(&images, truth, &sampler(kind), &loss, &[7], [0, 1]))
            .unwrap()
    };
    let all = forward(RoiSamplerKind::All);
    // `all`: every proposal and every non-crowd GT box (fg_iou = bg_iou_hi: nothing ignored).
    let proposals = tch::no_grad(|| {
        let (deltas, objectness) = frcnn.forward_t(&images, true).unwrap();
        let coder = frcnn.rpn_coder();
        coder
            .propose(
                &deltas,
                &objectness.squeeze_dim(2),
                &coder.proposal_config(true),
            )
            .unwrap()
    });
    let per_image: Vec<i64> = proposals.iter().map(|p| p.len()).collect();
    let gt = [2, 2];
    let expected: i64 = per_image.iter().zip(gt).map(|(p, g)| p + g).sum();
    assert_eq!(
        all.labels.size(),
        [expected],
        "every proposal + the GT boxes"
    );
    let fg = all.labels.gt(0).sum(Kind::Int64).int64_value(&[]);
    assert!(fg >= 4, "the GT boxes themselves are foreground: {fg}");

    // OHEM: per image the top 16 of `all`'s rows by loss after NMS 0.7, in loss order.
    let ohem = forward(RoiSamplerKind::Ohem);
    let per_roi = loss
        .per_roi(&RcnnLossInputs {
            class_logits: &all.class_logits,
            box_regression: &all.box_regression,
            labels: &all.labels,
            regression_targets: &all.regression_targets,
        })
        .unwrap();
    let (want_labels, want_targets) =
        ohem_expected(frcnn, &images, truth, &all, &per_roi, &proposals, &gt);
    assert_eq!(ohem.labels.size(), want_labels.size(), "OHEM's count");
    assert!(ohem.labels.equal(&want_labels), "OHEM's rows: labels");
    common::assert_close(
        "OHEM's rows: targets",
        &ohem.regression_targets,
        &want_targets,
        0.0,
        0.0,
    );
    // The OHEM rows' losses, recomputed on its own head outputs, descend within each image.
    let ohem_loss = loss
        .per_roi(&RcnnLossInputs {
            class_logits: &ohem.class_logits,
            box_regression: &ohem.box_regression,
            labels: &ohem.labels,
            regression_targets: &ohem.regression_targets,
        })
        .unwrap();
    let first = Vec::<f32>::try_from(ohem_loss.narrow(0, 0, 16.min(ohem_loss.size()[0]))).unwrap();
    assert!(first.windows(2).all(|w| w[0] >= w[1] - 1e-5), "{first:?}");
}

/// What OHEM should keep of `all`'s rows: per image the top 16 by `per_roi` after NMS 0.7, in
/// loss order; returns their labels and regression targets.
fn ohem_expected(
    frcnn: &FasterRcnn,
    images: &Tensor,
    truth: BatchTruth,
    all: &TwoStageOutputs,
    per_roi: &Tensor,
    proposals: &[tchcv::bbox::Proposals],
    gt: &[i64],
) -> (Tensor, Tensor) {
    let mut offset = 0;
    let mut want_labels = Vec::new();
    let mut want_targets = Vec::new();
    for (i, p) in proposals.iter().enumerate() {
        let n = p.len() + gt[i];
        let rows = |t: &Tensor| t.narrow(0, offset, n);
        let rois = all_boxes(frcnn, images, truth, i);
        assert_eq!(rois.size()[0], n, "image {i}: rows");
        let keep = ohem_select(&rois, &rows(per_roi), 0.7, 16).unwrap();
        assert!(keep.size()[0] <= 16);
        want_labels.push(rows(&all.labels).index_select(0, &keep));
        want_targets.push(rows(&all.regression_targets).index_select(0, &keep));
        offset += n;
    }
    (Tensor::cat(&want_labels, 0), Tensor::cat(&want_targets, 0))
}

/// Image `i`'s `all` RoI boxes `[P_i + G_i, 4]`: its proposals, then its non-crowd GT.
fn all_boxes(frcnn: &FasterRcnn, images: &Tensor, truth: BatchTruth, i: usize) -> Tensor {
    let (deltas, objectness) = tch::no_grad(|| frcnn.forward_t(images, true)).unwrap();
    let coder = frcnn.rpn_coder();
    let p = tch::no_grad(|| {
        coder.propose(
            &deltas,
            &objectness.squeeze_dim(2),
            &coder.proposal_config(true),
        )
    })
    .unwrap();
    let mut rows = ops::host_boxes(&p[i].boxes).unwrap();
    for (k, b) in truth.boxes[i].iter().enumerate() {
        if !truth.crowd[i][k] {
            rows.push(*b);
        }
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([-1, 4])
}

#[test]
fn the_roi_sample_is_keyed_by_the_step_and_the_place_in_the_global_batch() {
    let vs = nn::VarStore::new(CPU);
    let model = small_model(&vs);
    let frcnn = model.two_stage().unwrap();
    let (images, boxes, labels, crowd) = small_batch(4);
    let truth = BatchTruth {
        boxes: &boxes,
        labels: &labels,
        crowd: &crowd,
    };
    let loss = RcnnLoss::new(RcnnLossConfig::default()).unwrap();
    let config = RoiSamplerConfig {
        batch_size_per_image: 8,
        ..sampler(RoiSamplerKind::Random)
    };
    let run = |images: &Tensor, truth, keys: &[u64], shard| {
        tch::no_grad(|| frcnn.forward_train(images, truth, &config, &loss, keys, shard)).unwrap()
    };
    let a = run(&images, truth, &[1], [0, 1]);
    let b = run(&images, truth, &[1], [0, 1]);
    assert!(a.rois.equal(&b.rois), "same keys, same sample");
    assert_eq!(a.labels.size()[0], 16, "8 per image");
    let c = run(&images, truth, &[2], [0, 1]);
    assert!(!c.rois.equal(&a.rois), "another step, another sample");
    // Image 1 of one process's batch of 2 is image 0 of rank 1 of 2 (batch 1 each).
    let one = |t: &Tensor, i: i64| t.narrow(0, i, 1);
    let (b1, l1, c1) = (&boxes[1..], &labels[1..], &crowd[1..]);
    let rank1 = run(
        &one(&images, 1),
        BatchTruth {
            boxes: b1,
            labels: l1,
            crowd: c1,
        },
        &[1],
        [1, 2],
    );
    let rows0 = a.labels.size()[0] - rank1.labels.size()[0];
    assert!(
        a.rois
            .narrow(0, rows0, rank1.labels.size()[0])
            .equal(&rank1.rois),
        "rank 1's image draws what image 1 of the whole batch draws"
    );
}

#[test]
fn empty_samples_give_a_zero_loss_and_bad_layouts_are_named() {
    // No RoIs at all (e.g. ohem_per_image 0): a zero loss, not an error.
    let loss = RcnnLoss::new(RcnnLossConfig::default()).unwrap();
    let rows = |n: i64, w: i64| Tensor::zeros([0, n * w], (Kind::Float, CPU));
    let out = loss
        .forward(&RcnnLossInputs {
            class_logits: &rows(6, 1),
            box_regression: &rows(6, 4),
            labels: &Tensor::zeros([0], (Kind::Int64, CPU)),
            regression_targets: &rows(1, 4),
        })
        .unwrap();
    assert_eq!(out.total.double_value(&[]), 0.0);
    assert_eq!(
        loss.per_roi(&RcnnLossInputs {
            class_logits: &rows(6, 1),
            box_regression: &rows(6, 4),
            labels: &Tensor::zeros([0], (Kind::Int64, CPU)),
            regression_targets: &rows(1, 4),
        })
        .unwrap()
        .size(),
        [0]
    );
    // Pooling from maps of non-consecutive levels is refused at build, naming the field.
    let mut spec = model_json("faster_rcnn_small.json");
    spec["roi_heads"]["pool"]["maps"] = json!([1, 3]);
    spec["network"] = json!({"width": 1.0});
    let spec = ModelSpec::from_json_str(&spec.to_string(), "models/x.json").unwrap();
    let vs = nn::VarStore::new(CPU);
    let err = format!("{:#}", build(vs.root(), &spec, 5).unwrap_err());
    assert!(err.contains("roi_heads.pool.maps"), "{err}");
    // Ground truth for fewer images than the batch: a named error, no panic.
    let vs = nn::VarStore::new(CPU);
    let model = small_model(&vs);
    let (images, boxes, labels, crowd) = small_batch(5);
    let truth = BatchTruth {
        boxes: &boxes[..1],
        labels: &labels[..1],
        crowd: &crowd[..1],
    };
    let sampler = sampler(RoiSamplerKind::Random);
    let err = model
        .two_stage()
        .unwrap()
        .forward_train(&images, truth, &sampler, &loss, &[0], [0, 1])
        .unwrap_err();
    assert!(
        tchcv::is_bad_input(&err) && format!("{err:#}").contains("2 images"),
        "{err:#}"
    );
}
