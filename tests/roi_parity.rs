//! Faster R-CNN's second stage: parity with torchvision (tests/reference/roi.py: `ops.roi_align`,
//! `MultiScaleRoIAlign`, `RoIHeads`' matching and box coder, `fastrcnn_loss`,
//! `postprocess_detections`, `ops.nms` for OHEM) on fresh seeded random cases written here, plus
//! the sampler's counts and determinism, OHEM and focal properties, and bad-shape errors.
//!
//! Tolerances (each test repeats its own):
//! - roi_align values: |a - b| <= 1e-5 |b| + 1e-5 (the same f32 sample points and weights;
//!   tchcv sums them separably, per pixel row and column, torchvision per sample point and
//!   corner); gradients: the same (autograd against torchvision's hand-written backward);
//! - MultiScaleRoIAlign: levels and scales exact, values and gradients as roi_align;
//! - matching: labels and matched GT exact (the same f32 IoUs); regression targets at the
//!   foreground 1e-5 relative + 1e-5 (`ln` of Rust's libm against ATen's, times weight 5);
//! - fastrcnn_loss: values 1e-5 relative + 1e-7; gradients 1e-5 relative + 1e-7 (sum order);
//! - postprocess_detections (alone, and after the box head from pooled maps): the same count,
//!   labels and order (except among scores within 1e-5 relative: torchvision's sort is not
//!   stable), boxes 1e-5 relative + 1e-4 px, scores 1e-5 relative + 1e-6;
//! - OHEM: the same indices, in the same order (distinct losses, so no ties).
//!
//! The CUDA variants skip (with the reason in target/test-skips.log) where there is no GPU.

mod common;

use common::detections::{assert_same_detections, Detection, DetectionTolerance};

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tchcv::bbox::coder::decode_weighted;
use tchcv::bbox::ops;
use tchcv::bbox::rcnn::{
    label_proposals, ohem_select, ohem_select_batch, sample_batch_rois, sample_rois, BatchTruth,
    RoiSample, RoiSamplerConfig, RoiSamplerKind,
};
use tchcv::loss::{
    own_class_deltas, DetectionLoss, LossInputs, RcnnClsLoss, RcnnLoss, RcnnLossConfig,
    RcnnLossInputs, SoftmaxFocalLoss, SoftmaxFocalLossConfig,
};
use tchcv::models::roi_align::{roi_align, rois_from_boxes, MultiScaleRoiAlign, RoiAlignConfig};
use tchcv::models::roi_heads::{
    postprocess_detections, FastRcnnPredictor, PostprocessConfig, RoiBoxHead, TwoMlpHead,
};
use tchcv::rng::Rng;

type Tensors = HashMap<String, Tensor>;

const CPU: Device = Device::Cpu;

/// Write `tensors` and `meta` as `dir/case.{safetensors,json}`, run `roi.py cmd` on them and
/// read `<cmd>.safetensors` and `<cmd>.json`.
fn reference(
    dir: &Path,
    cmd: &str,
    tensors: &[(String, Tensor)],
    meta: &Value,
    device: Device,
) -> (Tensors, Value) {
    let case = dir.join("case.safetensors");
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    tchcv::io::write_safetensors(&case, &refs).unwrap();
    std::fs::write(dir.join("case.json"), serde_json::to_string(meta).unwrap()).unwrap();
    let (case, out) = (case.display().to_string(), dir.display().to_string());
    let device = if device == CPU { "cpu" } else { "cuda" };
    common::run_reference(
        "roi.py",
        &[cmd, "--case", &case, "--out", &out, "--device", device],
    );
    let t = common::read_safetensors(&dir.join(format!("{cmd}.safetensors")));
    let text = std::fs::read_to_string(dir.join(format!("{cmd}.json"))).unwrap();
    (t, serde_json::from_str(&text).unwrap())
}

fn take<'a>(t: &'a Tensors, name: &str) -> &'a Tensor {
    t.get(name)
        .unwrap_or_else(|| panic!("reference output lacks {name}"))
}

fn i64s(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(CPU).to_kind(Kind::Int64).contiguous().view(-1)).unwrap()
}

fn uniform(shape: &[i64], lo: f64, hi: f64) -> Tensor {
    Tensor::rand(shape, (Kind::Float, CPU)) * (hi - lo) + lo
}

/// `k` random xyxy boxes in a `w` x `h` image, sides `lo..hi` of the image, some past its edges.
fn random_boxes(rng: &mut Rng, k: usize, [w, h]: [f64; 2], lo: f64, hi: f64, spill: f64) -> Tensor {
    let mut boxes = Vec::with_capacity(k);
    for _ in 0..k {
        let (bw, bh) = (rng.uniform(lo, hi) * w, rng.uniform(lo, hi) * h);
        let x = rng.uniform(-spill * w, w - bw + spill * w);
        let y = rng.uniform(-spill * h, h - bh + spill * h);
        boxes.push([x as f32, y as f32, (x + bw) as f32, (y + bh) as f32]);
    }
    ops::boxes_tensor(&boxes)
}

// ---------------------------------------------------------------------------------------------
// roi_align
// ---------------------------------------------------------------------------------------------

/// One roi_align case: features `[2, 3, 13, 17]`, RoIs in image coordinates (image = map /
/// scale) of every kind: inside, past the borders (samples beyond -1 / H dropped), smaller
/// than a pixel (`max(size, 1)` when not aligned), reversed (negative size when aligned).
fn align_case(rng: &mut Rng, config: &RoiAlignConfig) -> (Tensor, Tensor, Tensor) {
    let (b, c, h, w) = (2, 3, 13, 17);
    let features = Tensor::randn([b, c, h, w], (Kind::Float, CPU));
    let image = [
        w as f64 / config.spatial_scale,
        h as f64 / config.spatial_scale,
    ];
    let mut boxes = vec![
        random_boxes(rng, 14, image, 0.05, 0.9, 0.0),
        random_boxes(rng, 6, image, 0.1, 0.5, 0.3),
        random_boxes(rng, 3, image, 0.001, 0.02, 0.0),
    ];
    let flipped = random_boxes(rng, 2, image, 0.05, 0.2, 0.0);
    boxes.push(Tensor::cat(
        &[flipped.narrow(1, 2, 2), flipped.narrow(1, 0, 2)],
        1,
    ));
    let boxes = Tensor::cat(&boxes, 0);
    let k = boxes.size()[0];
    let batch: Vec<f32> = (0..k).map(|_| rng.below(b as u64) as f32).collect();
    let rois = Tensor::cat(&[Tensor::from_slice(&batch).view([k, 1]), boxes], 1);
    let [ph, pw] = config.output_size;
    let grad = Tensor::randn([k, c, ph, pw], (Kind::Float, CPU));
    (features, rois, grad)
}

fn align_configs() -> Vec<RoiAlignConfig> {
    let mut out = Vec::new();
    for aligned in [false, true] {
        for sampling_ratio in [2, -1, 1] {
            for (spatial_scale, output_size) in [
                (1.0, [7, 7]),
                (0.5, [5, 3]),
                (0.25, [7, 7]),
                (0.125, [2, 4]),
            ] {
                out.push(RoiAlignConfig {
                    output_size,
                    spatial_scale,
                    sampling_ratio,
                    aligned,
                });
            }
        }
    }
    out
}

fn roi_align_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    tch::manual_seed(seed as i64);
    let mut rng = Rng::keyed(seed, &[1]);
    let configs = align_configs();
    let mut tensors = Vec::new();
    let mut metas = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        let (f, r, g) = align_case(&mut rng, config);
        tensors.push((format!("c{i}.features"), f));
        tensors.push((format!("c{i}.rois"), r));
        tensors.push((format!("c{i}.grad"), g));
        metas.push(
            json!({"output_size": config.output_size, "spatial_scale": config.spatial_scale,
                          "sampling_ratio": config.sampling_ratio, "aligned": config.aligned}),
        );
    }
    let (t, _) = reference(&dir, "align", &tensors, &json!({"configs": metas}), device);
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (i, config) in configs.iter().enumerate() {
        let ctx = format!("{what}: {config:?}");
        let features = by_name[format!("c{i}.features").as_str()]
            .to_device(device)
            .set_requires_grad(true);
        let rois = by_name[format!("c{i}.rois").as_str()].to_device(device);
        let out = roi_align(&features, &rois, config).expect(&ctx);
        let grad = by_name[format!("c{i}.grad").as_str()].to_device(device);
        (&out * grad).sum(Kind::Float).backward();
        common::assert_close(
            &format!("{ctx}: values"),
            &out,
            take(&t, &format!("c{i}.out")),
            1e-5,
            1e-5,
        );
        common::assert_close(
            &format!("{ctx}: gradient"),
            &features.grad(),
            take(&t, &format!("c{i}.grad_features")),
            1e-5,
            1e-5,
        );
        // Not a vacuous comparison: most outputs are not zero.
        let nonzero = out.ne(0.0).sum(Kind::Int64).int64_value(&[]);
        assert!(
            nonzero * 2 > out.numel() as i64,
            "{ctx}: only {nonzero} non-zero outputs"
        );
    }
}

#[test]
fn roi_align_matches_torchvision_cpu() {
    roi_align_parity(CPU, "roi_align_cpu");
}

#[test]
fn roi_align_matches_torchvision_cuda() {
    if let Some(device) = common::cuda_or_skip("roi_align_matches_torchvision_cuda") {
        roi_align_parity(device, "roi_align_cuda");
    }
}

#[test]
fn roi_align_splits_large_batches_into_chunks_with_the_same_result() {
    // 4000 RoIs x (20 x 20 + 7 x 20) window values x 8 channels exceed the gather budget.
    tch::manual_seed(5);
    let mut rng = Rng::keyed(5, &[]);
    let features = Tensor::randn([1, 8, 20, 20], (Kind::Float, CPU));
    let boxes = random_boxes(&mut rng, 4000, [80.0, 80.0], 0.05, 0.9, 0.1);
    let rois = rois_from_boxes(&[boxes]).unwrap();
    let config = RoiAlignConfig {
        output_size: [7, 7],
        spatial_scale: 0.25,
        sampling_ratio: 2,
        aligned: false,
    };
    let all = roi_align(&features, &rois, &config).unwrap();
    let parts: Vec<Tensor> = (0..4)
        .map(|i| roi_align(&features, &rois.narrow(0, i * 1000, 1000), &config).unwrap())
        .collect();
    // Other windows, other blocking in the einsums: equal within rounding.
    common::assert_close("chunked", &all, &Tensor::cat(&parts, 0), 1e-6, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// MultiScaleRoIAlign
// ---------------------------------------------------------------------------------------------

/// A MultiScaleRoIAlign case: images of 320x256 and 288x224 (w x h), maps at strides 4..32 of
/// the padded 320x256, boxes of every level, the output's gradient. Tensors by name.
fn multiscale_case(seed: u64, image_sizes: &[[i64; 2]]) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed as i64);
    let mut rng = Rng::keyed(seed, &[2]);
    let mut tensors = Vec::new();
    for (l, stride) in [4, 8, 16, 32].iter().enumerate() {
        let f = Tensor::randn([2, 4, 256 / stride, 320 / stride], (Kind::Float, CPU));
        tensors.push((format!("feature{l}"), f));
    }
    for (i, [w, h]) in image_sizes.iter().enumerate() {
        let size = [*w as f64, *h as f64];
        let boxes = Tensor::cat(
            &[
                random_boxes(&mut rng, 30, size, 0.03, 0.95, 0.0),
                random_boxes(&mut rng, 10, size, 0.01, 0.08, 0.0),
                // sqrt(area) >= 224: level k0 = 4 (the third map).
                random_boxes(&mut rng, 4, size, 0.9, 1.0, 0.0),
            ],
            0,
        );
        tensors.push((format!("boxes{i}"), boxes));
    }
    let k = 44 * image_sizes.len() as i64;
    tensors.push((
        "grad".into(),
        Tensor::randn([k, 4, 7, 7], (Kind::Float, CPU)),
    ));
    tensors
}

fn multiscale_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let image_sizes = [[320, 256], [288, 224]];
    let tensors = multiscale_case(seed, &image_sizes);
    let shapes: Vec<[i64; 2]> = image_sizes.iter().map(|[w, h]| [*h, *w]).collect();
    let meta = json!({"levels": 4, "images": 2, "image_shapes": shapes, "output_size": 7, "sampling_ratio": 2});
    let (t, out_meta) = reference(&dir, "multiscale", &tensors, &meta, device);
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let features: Vec<Tensor> = (0..4)
        .map(|l| {
            by_name[format!("feature{l}").as_str()]
                .to_device(device)
                .set_requires_grad(true)
        })
        .collect();
    let boxes: Vec<Tensor> = (0..2)
        .map(|i| by_name[format!("boxes{i}").as_str()].to_device(device))
        .collect();
    let pool = MultiScaleRoiAlign::default();
    let (scales, mapper) = pool.setup(&[64, 32, 16, 8], &image_sizes).unwrap();
    let want_scales: Vec<f64> = out_meta["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scales, want_scales, "{what}: scales");
    let levels = mapper.levels(&Tensor::cat(&boxes, 0)).unwrap();
    assert_eq!(i64s(&levels), i64s(take(&t, "levels")), "{what}: levels");
    let used: std::collections::HashSet<i64> = i64s(&levels).into_iter().collect();
    assert!(
        used.len() >= 3,
        "{what}: the boxes use only levels {used:?}"
    );
    let out = pool.forward(&features, &boxes, &image_sizes).unwrap();
    (&out * by_name["grad"].to_device(device))
        .sum(Kind::Float)
        .backward();
    common::assert_close(
        &format!("{what}: values"),
        &out,
        take(&t, "out"),
        1e-5,
        1e-5,
    );
    for (l, f) in features.iter().enumerate() {
        common::assert_close(
            &format!("{what}: gradient of map {l}"),
            &f.grad(),
            take(&t, &format!("grad{l}")),
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn multiscale_roi_align_matches_torchvision_cpu() {
    multiscale_parity(CPU, "multiscale_cpu");
}

#[test]
fn multiscale_roi_align_matches_torchvision_cuda() {
    if let Some(device) = common::cuda_or_skip("multiscale_roi_align_matches_torchvision_cuda") {
        multiscale_parity(device, "multiscale_cuda");
    }
}

// ---------------------------------------------------------------------------------------------
// Matching and sampling
// ---------------------------------------------------------------------------------------------

/// Per image: GT boxes (0-based labels) and proposals, many of them near a GT (jittered), so
/// foreground, background and the band all occur. Image 2 has no GT.
struct MatchCase {
    proposals: Vec<Tensor>,
    gt: Vec<Vec<[f32; 4]>>,
    gt_labels: Vec<Vec<i64>>,
}

impl MatchCase {
    /// The GT as the batch sampler takes it (no crowd regions).
    fn truth(&self) -> BatchTruth<'_> {
        BatchTruth {
            boxes: &self.gt,
            labels: &self.gt_labels,
            crowd: &[],
        }
    }
}

fn match_case(seed: u64) -> MatchCase {
    let mut rng = Rng::keyed(seed, &[3]);
    let size = [200.0, 160.0];
    let (mut proposals, mut gt, mut gt_labels) = (vec![], vec![], vec![]);
    for (i, count) in [6usize, 1, 0, 12].into_iter().enumerate() {
        let g = random_boxes(&mut rng, count, size, 0.1, 0.5, 0.0);
        let host = ops::host_boxes(&g).unwrap();
        let mut near = Vec::new();
        for b in &host {
            for _ in 0..40 {
                let (w, h) = (b[2] - b[0], b[3] - b[1]);
                let j = |s: f32, rng: &mut Rng| (rng.uniform(-0.3, 0.3) as f32) * s;
                near.push([
                    b[0] + j(w, &mut rng),
                    b[1] + j(h, &mut rng),
                    b[2] + j(w, &mut rng),
                    b[3] + j(h, &mut rng),
                ]);
            }
        }
        let random = random_boxes(&mut rng, 300 + 50 * i, size, 0.02, 0.6, 0.0);
        proposals.push(Tensor::cat(
            &[ops::boxes_tensor(&near).view([-1, 4]), random],
            0,
        ));
        gt_labels.push((0..count).map(|_| rng.below(7) as i64).collect());
        gt.push(host);
    }
    MatchCase {
        proposals,
        gt,
        gt_labels,
    }
}

#[test]
fn matching_matches_torchvision_roi_heads() {
    let what = "roi_match";
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let case = match_case(seed);
    let mut tensors = Vec::new();
    for i in 0..case.proposals.len() {
        tensors.push((format!("proposals{i}"), case.proposals[i].shallow_clone()));
        tensors.push((
            format!("gt_boxes{i}"),
            ops::boxes_tensor(&case.gt[i]).view([-1, 4]),
        ));
        // torchvision's labels are 1-based (0 is the background).
        tensors.push((
            format!("gt_labels{i}"),
            Tensor::from_slice(&case.gt_labels[i]) + 1,
        ));
    }
    let (t, meta) = reference(
        &dir,
        "match",
        &tensors,
        &json!({"images": case.proposals.len()}),
        CPU,
    );
    let config = RoiSamplerConfig {
        seed,
        ..Default::default()
    };
    let mut foreground = 0;
    for i in 0..case.proposals.len() {
        let ctx = format!("{what}: image {i}");
        let host = ops::host_boxes(&case.proposals[i]).unwrap();
        let got = label_proposals(&host, &case.gt[i], &case.gt_labels[i], &config).unwrap();
        common::assert_close(
            &format!("{ctx}: proposals with GT"),
            &ops::boxes_tensor(&got.boxes).view([-1, 4]),
            take(&t, &format!("proposals{i}")),
            0.0,
            0.0,
        );
        assert_eq!(
            got.labels,
            i64s(take(&t, &format!("labels{i}"))),
            "{ctx}: labels"
        );
        let matched = i64s(take(&t, &format!("matched{i}")));
        let fg: Vec<usize> = (0..got.labels.len())
            .filter(|&r| got.labels[r] > 0)
            .collect();
        for &r in &fg {
            assert_eq!(
                got.matched_gt[r], matched[r],
                "{ctx}: matched GT of RoI {r}"
            );
        }
        foreground += fg.len();
        let sample = sample_rois(&got, &config, &mut config.rng(&[], i as u64)).unwrap();
        check_sample(&sample, &t, &meta["counts"][i], i, &ctx);
    }
    assert!(
        foreground > 100,
        "{what}: only {foreground} foreground RoIs"
    );
}

/// The sample of image `i`: counts as torchvision's sampler, the sampled rows' labels, and the
/// regression targets at the foreground as its coder.
fn check_sample(sample: &RoiSample, t: &Tensors, want: &Value, i: usize, ctx: &str) {
    let labels = i64s(&sample.labels);
    assert_eq!(
        sample.num_pos,
        want["pos"].as_i64().unwrap(),
        "{ctx}: sampled foreground"
    );
    assert_eq!(
        labels.len() as i64 - sample.num_pos,
        want["neg"].as_i64().unwrap(),
        "{ctx}: sampled background"
    );
    let index = &sample.index;
    let fg_rows = sample.labels.gt(0).nonzero().view(-1);
    if fg_rows.numel() > 0 {
        let want_targets = take(t, &format!("targets{i}"))
            .index_select(0, index)
            .index_select(0, &fg_rows);
        common::assert_close(
            &format!("{ctx}: regression targets"),
            &sample.regression_targets.index_select(0, &fg_rows),
            &want_targets,
            1e-5,
            1e-5,
        );
    }
    let want_labels = take(t, &format!("labels{i}")).index_select(0, index);
    assert_eq!(labels, i64s(&want_labels), "{ctx}: sampled rows' labels");
}

#[test]
fn sampler_counts_bands_and_determinism() {
    let case = match_case(11);
    let base = RoiSamplerConfig {
        seed: 4,
        ..Default::default()
    };
    let draw = |config: &RoiSamplerConfig, keys: &[u64]| {
        sample_batch_rois(&case.proposals, case.truth(), config, keys, [0, 1]).unwrap()
    };
    let a = draw(&base, &[0]);
    for (i, s) in a.iter().enumerate() {
        let labelled = label_proposals(
            &ops::host_boxes(&case.proposals[i]).unwrap(),
            &case.gt[i],
            &case.gt_labels[i],
            &base,
        )
        .unwrap();
        let fg = labelled.labels.iter().filter(|&&l| l > 0).count() as i64;
        let bg = labelled.labels.iter().filter(|&&l| l == 0).count() as i64;
        let r = s.labels.size()[0];
        assert_eq!(
            s.num_pos,
            fg.min(128),
            "image {i}: foreground at most 25% of 512"
        );
        assert_eq!(
            r - s.num_pos,
            bg.min(512 - s.num_pos),
            "image {i}: background fills the rest"
        );
        assert!(r <= 512);
        assert!(
            i64s(&s.index).windows(2).all(|w| w[0] < w[1]),
            "ascending rows"
        );
    }
    // Same seed and keys: the same sample; another step: another one.
    let again = draw(&base, &[0]);
    let other = draw(&base, &[1]);
    for i in 0..a.len() {
        assert!(a[i].index.equal(&again[i].index));
    }
    assert!((0..a.len()).any(|i| !a[i].index.equal(&other[i].index)));
    // all: every labelled RoI; a band below bg_iou_lo is ignored.
    let all = RoiSamplerConfig {
        kind: RoiSamplerKind::All,
        bg_iou_lo: 0.1,
        ..base.clone()
    };
    for (i, s) in draw(&all, &[0]).iter().enumerate() {
        let labelled = label_proposals(
            &ops::host_boxes(&case.proposals[i]).unwrap(),
            &case.gt[i],
            &case.gt_labels[i],
            &all,
        )
        .unwrap();
        let kept: Vec<i64> = (0..labelled.labels.len() as i64)
            .filter(|&r| labelled.labels[r as usize] >= 0)
            .collect();
        assert_eq!(i64s(&s.index), kept, "image {i}: all");
        for (r, &l) in labelled.labels.iter().enumerate() {
            let iou = labelled.max_iou[r];
            let want = if iou >= 0.5 {
                l > 0
            } else if iou >= 0.1 || case.gt[i].is_empty() {
                l == 0
            } else {
                l == -1
            };
            assert!(want, "image {i} RoI {r}: IoU {iou} labelled {l}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The loss
// ---------------------------------------------------------------------------------------------

/// The loss inputs of tchcv's sample of [`match_case`]: labels and targets, random logits and
/// regressions (near the targets at the foreground's own class).
fn loss_case(seed: u64, classes: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let case = match_case(seed);
    let config = RoiSamplerConfig {
        seed,
        ..Default::default()
    };
    let samples = sample_batch_rois(&case.proposals, case.truth(), &config, &[0], [0, 1]).unwrap();
    let labels = Tensor::cat(
        &samples
            .iter()
            .map(|s| s.labels.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let targets = Tensor::cat(
        &samples
            .iter()
            .map(|s| s.regression_targets.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let r = labels.size()[0];
    tch::manual_seed(seed as i64);
    let logits = Tensor::randn([r, classes], (Kind::Float, CPU)) * 2.0;
    let regression = Tensor::randn([r, classes * 4], (Kind::Float, CPU));
    let own =
        targets.repeat([1, classes]) + Tensor::randn([r, classes * 4], (Kind::Float, CPU)) * 0.1;
    let fg = labels.gt(0).view([r, 1]);
    let regression = own.where_self(&fg, &regression);
    (logits, regression, labels, targets)
}

fn loss_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let (logits, regression, labels, targets) = loss_case(seed, 8);
    let tensors = vec![
        ("class_logits".to_string(), logits.shallow_clone()),
        ("box_regression".to_string(), regression.shallow_clone()),
        ("labels".to_string(), labels.shallow_clone()),
        ("regression_targets".to_string(), targets.shallow_clone()),
    ];
    let (t, _) = reference(&dir, "loss", &tensors, &json!({}), device);
    let logits = logits.to_device(device).set_requires_grad(true);
    let regression = regression.to_device(device).set_requires_grad(true);
    let (labels, targets) = (labels.to_device(device), targets.to_device(device));
    let out = RcnnLoss::new(RcnnLossConfig::default())
        .unwrap()
        .forward(&RcnnLossInputs {
            class_logits: &logits,
            box_regression: &regression,
            labels: &labels,
            regression_targets: &targets,
        })
        .unwrap();
    assert!(out.num_pos > 20, "{what}: {} foreground", out.num_pos);
    let stats = out.stats();
    let close = |name: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs() + 1e-7,
            "{what}: {name}: tchcv {got} torchvision {want}"
        );
    };
    close(
        "loss_classifier",
        stats.cls_per_pos,
        take(&t, "loss_classifier").double_value(&[]),
    );
    close(
        "loss_box_reg",
        stats.loc_per_pos,
        take(&t, "loss_box_reg").double_value(&[]),
    );
    out.total.backward();
    common::assert_close(
        &format!("{what}: grad class_logits"),
        &logits.grad(),
        take(&t, "grad_class_logits"),
        1e-5,
        1e-7,
    );
    common::assert_close(
        &format!("{what}: grad box_regression"),
        &regression.grad(),
        take(&t, "grad_box_regression"),
        1e-5,
        1e-7,
    );
}

#[test]
fn fastrcnn_loss_matches_torchvision_cpu() {
    loss_parity(CPU, "rcnn_loss_cpu");
}

#[test]
fn fastrcnn_loss_matches_torchvision_cuda() {
    if let Some(device) = common::cuda_or_skip("fastrcnn_loss_matches_torchvision_cuda") {
        loss_parity(device, "rcnn_loss_cuda");
    }
}

#[test]
fn focal_on_the_second_stage_is_the_softmax_focal_loss_on_those_rows() {
    let (logits, regression, labels, targets) = loss_case(21, 8);
    let focal = SoftmaxFocalLossConfig {
        gamma: 1.5,
        beta: 1.0 / 9.0,
        ..Default::default()
    };
    let config = RcnnLossConfig {
        cls: RcnnClsLoss::SoftmaxFocal(focal.clone()),
        beta: 1.0 / 9.0,
        ..Default::default()
    };
    let inputs = RcnnLossInputs {
        class_logits: &logits,
        box_regression: &regression,
        labels: &labels,
        regression_targets: &targets,
    };
    let got = RcnnLoss::new(config).unwrap().forward(&inputs).unwrap();
    let own = own_class_deltas(&regression, &labels).unwrap();
    let want = SoftmaxFocalLoss::new(focal)
        .unwrap()
        .forward(&LossInputs {
            loc_preds: &own.unsqueeze(0),
            loc_targets: &targets.unsqueeze(0),
            cls_preds: &logits.unsqueeze(0),
            cls_targets: &labels.unsqueeze(0),
        })
        .unwrap();
    assert_eq!(got.total.double_value(&[]), want.total.double_value(&[]));
    assert_eq!(got.num_pos, want.num_pos);
    // And it is not the cross entropy.
    let ce = RcnnLoss::new(RcnnLossConfig::default())
        .unwrap()
        .forward(&inputs)
        .unwrap();
    assert_ne!(ce.cls_sum.double_value(&[]), got.cls_sum.double_value(&[]));
}

// ---------------------------------------------------------------------------------------------
// OHEM
// ---------------------------------------------------------------------------------------------

#[test]
fn ohem_keeps_the_top_b_by_loss_after_nms_as_torchvision() {
    let what = "roi_ohem";
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let case = match_case(seed);
    let config = RoiSamplerConfig {
        kind: RoiSamplerKind::Ohem,
        seed,
        ohem_per_image: 64,
        ..Default::default()
    };
    let samples = sample_batch_rois(&case.proposals, case.truth(), &config, &[0], [0, 1]).unwrap();
    let mut tensors = Vec::new();
    let mut losses = Vec::new();
    let loss = RcnnLoss::new(RcnnLossConfig::default()).unwrap();
    tch::manual_seed(seed as i64);
    for (i, s) in samples.iter().enumerate() {
        let r = s.labels.size()[0];
        let logits = Tensor::randn([r, 8], (Kind::Float, CPU));
        let regression = Tensor::randn([r, 32], (Kind::Float, CPU));
        let l = loss
            .per_roi(&RcnnLossInputs {
                class_logits: &logits,
                box_regression: &regression,
                labels: &s.labels,
                regression_targets: &s.regression_targets,
            })
            .unwrap();
        assert_eq!(
            l.unique_dim(0, true, false, false).0.size()[0],
            r,
            "distinct losses"
        );
        tensors.push((format!("boxes{i}"), s.boxes.shallow_clone()));
        tensors.push((format!("loss{i}"), l.shallow_clone()));
        losses.push(l);
    }
    let meta = json!({"images": samples.len(), "nms_threshold": 0.7, "per_image": 64});
    let (t, _) = reference(&dir, "ohem", &tensors, &meta, CPU);
    for (i, s) in samples.iter().enumerate() {
        let keep = ohem_select(&s.boxes, &losses[i], 0.7, 64).unwrap();
        assert_eq!(
            i64s(&keep),
            i64s(take(&t, &format!("keep{i}"))),
            "{what}: image {i}"
        );
        assert_eq!(
            keep.size()[0],
            64,
            "{what}: image {i}: B RoIs survive the NMS"
        );
        let picked = losses[i].index_select(0, &keep);
        assert!(
            i64s(&picked.argsort(0, true)) == (0..keep.size()[0]).collect::<Vec<_>>(),
            "loss order"
        );
    }
    // The batch: each image's selection, offset by the rows before it.
    let all = Tensor::cat(&losses, 0);
    let batch = ohem_select_batch(&samples, &all, &config).unwrap();
    let mut offset = 0;
    let mut want = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        want.extend(i64s(
            &(ohem_select(&s.boxes, &losses[i], 0.7, 64).unwrap() + offset),
        ));
        offset += s.boxes.size()[0];
    }
    assert_eq!(i64s(&batch), want);
}

// ---------------------------------------------------------------------------------------------
// The box head and postprocess_detections
// ---------------------------------------------------------------------------------------------

fn post_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    tch::manual_seed(seed as i64);
    let mut rng = Rng::keyed(seed, &[4]);
    let image_sizes = [[200i64, 160i64], [120, 180]];
    let proposals: Vec<Tensor> = image_sizes
        .iter()
        .map(|[w, h]| random_boxes(&mut rng, 150, [*w as f64, *h as f64], 0.05, 0.6, 0.1))
        .collect();
    let classes = 6;
    // Through the real head: pooled features -> TwoMLPHead -> FastRCNNPredictor.
    let vs = tch::nn::VarStore::new(CPU);
    let root = vs.root() / "roi_heads";
    let head = TwoMlpHead::new(&(&root / "box_head"), 4 * 7 * 7, 64).unwrap();
    let predictor = FastRcnnPredictor::new(&(&root / "box_predictor"), 64, classes).unwrap();
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(
        names.contains(&"roi_heads.box_predictor.bbox_pred.weight".to_string()),
        "{names:?}"
    );
    let pooled = Tensor::randn([300, 4, 7, 7], (Kind::Float, CPU));
    let (logits, regression) =
        tch::no_grad(|| predictor.forward(&head.forward(&pooled).unwrap())).unwrap();
    assert_eq!(regression.size(), [300, classes * 4]);
    let logits = logits * 4.0; // sharper scores: some pass 0.05
    let regression = regression * 5.0 + uniform(&[300, classes * 4], -0.5, 0.5);
    let mut tensors = vec![
        ("class_logits".to_string(), logits.shallow_clone()),
        ("box_regression".to_string(), regression.shallow_clone()),
    ];
    for (i, p) in proposals.iter().enumerate() {
        tensors.push((format!("proposals{i}"), p.shallow_clone()));
    }
    let shapes: Vec<[i64; 2]> = image_sizes.iter().map(|[w, h]| [*h, *w]).collect();
    let meta = json!({"images": 2, "image_shapes": shapes});
    let (t, out_meta) = reference(&dir, "post", &tensors, &meta, device);
    let proposals: Vec<Tensor> = proposals.iter().map(|p| p.to_device(device)).collect();
    let got = postprocess_detections(
        &logits.to_device(device),
        &regression.to_device(device),
        &proposals,
        &image_sizes,
        &PostprocessConfig::default(),
    )
    .unwrap();
    let mut total = 0;
    for (i, d) in got.iter().enumerate() {
        let ctx = format!("{what}: image {i}");
        assert_eq!(
            d.scores.size()[0],
            out_meta["counts"][i].as_i64().unwrap(),
            "{ctx}: count"
        );
        let want = Detection::all(
            take(&t, &format!("boxes{i}")),
            take(&t, &format!("scores{i}")),
            take(&t, &format!("labels{i}")),
        );
        assert_same_detections(
            &Detection::all(&d.boxes, &d.scores, &d.labels),
            &want,
            &DetectionTolerance::default(),
            &ctx,
        );
        let n = d.scores.size()[0];
        total += n;
    }
    assert!(total > 20, "{what}: only {total} detections");
}

#[test]
fn postprocess_detections_matches_torchvision_cpu() {
    post_parity(CPU, "rcnn_post_cpu");
}

#[test]
fn postprocess_detections_matches_torchvision_cuda() {
    if let Some(device) = common::cuda_or_skip("postprocess_detections_matches_torchvision_cuda") {
        post_parity(device, "rcnn_post_cuda");
    }
}

/// The box branch with torchvision's variable names, its weights handed to torchvision's
/// `RoIHeads`: the detections of both in eval mode on the same maps and proposals.
fn heads_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what);
    let dir = common::scratch(what);
    let image_sizes = [[320, 256], [288, 224]];
    let mut tensors = multiscale_case(seed, &image_sizes);
    let vs = tch::nn::VarStore::new(device);
    let heads = RoiBoxHead::new(
        &(vs.root() / "roi_heads"),
        MultiScaleRoiAlign::default(),
        4,
        32,
        6,
    )
    .unwrap();
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, v) in &variables {
        if name.contains("cls_score") {
            // Scores spread apart (some saturate: ties are handled by the comparison).
            let _ = tch::no_grad(|| v.shallow_clone().g_mul_scalar_(4.0));
        }
        tensors.push((name.clone(), v.to_device(CPU)));
    }
    let shapes: Vec<[i64; 2]> = image_sizes.iter().map(|[w, h]| [*h, *w]).collect();
    let meta = json!({"levels": 4, "images": 2, "image_shapes": shapes, "channels": 4,
                      "representation": 32, "num_classes": 6});
    let (t, out_meta) = reference(&dir, "heads", &tensors, &meta, device);
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let features: Vec<Tensor> = (0..4)
        .map(|l| by_name[format!("feature{l}").as_str()].to_device(device))
        .collect();
    let proposals: Vec<Tensor> = (0..2)
        .map(|i| by_name[format!("boxes{i}").as_str()].to_device(device))
        .collect();
    let got = heads
        .detect(
            &features,
            &proposals,
            &image_sizes,
            &PostprocessConfig::default(),
        )
        .unwrap();
    for (i, d) in got.iter().enumerate() {
        let ctx = format!("{what}: image {i}");
        let count = out_meta["counts"][i].as_i64().unwrap();
        assert_eq!(d.scores.size()[0], count, "{ctx}: count");
        assert!(count > 10, "{ctx}: only {count} detections");
        let want = Detection::all(
            take(&t, &format!("boxes{i}")),
            take(&t, &format!("scores{i}")),
            take(&t, &format!("labels{i}")),
        );
        let got = Detection::all(&d.boxes, &d.scores, &d.labels);
        assert_same_detections(&got, &want, &DetectionTolerance::default(), &ctx);
    }
}

#[test]
fn roi_box_head_detections_match_torchvision_roi_heads_cpu() {
    heads_parity(CPU, "rcnn_heads_cpu");
}

#[test]
fn roi_box_head_detections_match_torchvision_roi_heads_cuda() {
    if let Some(device) =
        common::cuda_or_skip("roi_box_head_detections_match_torchvision_roi_heads_cuda")
    {
        heads_parity(device, "rcnn_heads_cuda");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad shapes: named errors, no panics
// ---------------------------------------------------------------------------------------------

fn bad(err: anyhow::Error, want: &str) {
    assert!(tchcv::is_bad_input(&err), "{err:#}");
    assert!(format!("{err:#}").contains(want), "{err:#} lacks {want:?}");
}

#[test]
fn bad_shapes_of_roi_align_and_sampling_are_named_errors() {
    let f = Tensor::zeros([1, 2, 5, 5], (Kind::Float, CPU));
    let config = RoiAlignConfig {
        output_size: [2, 2],
        spatial_scale: 1.0,
        sampling_ratio: 2,
        aligned: false,
    };
    bad(
        roi_align(&f, &Tensor::zeros([3, 4], (Kind::Float, CPU)), &config).unwrap_err(),
        "rois: expected [K, 5]",
    );
    bad(
        roi_align(
            &f,
            &Tensor::from_slice(&[1f32, 0., 0., 2., 2.]).view([1, 5]),
            &config,
        )
        .unwrap_err(),
        "batch indices",
    );
    bad(
        roi_align(
            &f.view([2, 5, 5]),
            &Tensor::zeros([1, 5], (Kind::Float, CPU)),
            &config,
        )
        .unwrap_err(),
        "features",
    );
    bad(
        rois_from_boxes(&[Tensor::zeros([2, 3], (Kind::Float, CPU))]).unwrap_err(),
        "boxes[0]",
    );
    let pool = MultiScaleRoiAlign::default();
    bad(
        pool.forward(
            &[f.shallow_clone()],
            &[Tensor::zeros([1, 4], (Kind::Float, CPU))],
            &[],
        )
        .unwrap_err(),
        "image sizes",
    );
    bad(
        label_proposals(
            &[[0.0, 0.0, 1.0, 1.0]],
            &[[0.0, 0.0, 1.0, 1.0]],
            &[],
            &RoiSamplerConfig::default(),
        )
        .unwrap_err(),
        "gt_labels",
    );
    bad(
        ohem_select(
            &Tensor::zeros([3, 4], (Kind::Float, CPU)),
            &Tensor::zeros([2], (Kind::Float, CPU)),
            0.7,
            2,
        )
        .unwrap_err(),
        "nms scores",
    );
    bad(
        decode_weighted(
            &Tensor::zeros([3, 6], (Kind::Float, CPU)),
            &Tensor::zeros([3, 4], (Kind::Float, CPU)),
            [10.0, 10.0, 5.0, 5.0],
            4.0,
        )
        .unwrap_err(),
        "deltas",
    );
}

#[test]
fn bad_shapes_of_the_loss_and_head_are_named_errors() {
    let z = |s: &[i64]| Tensor::zeros(s, (Kind::Float, CPU));
    let labels = Tensor::zeros([3], (Kind::Int64, CPU));
    let loss = RcnnLoss::new(RcnnLossConfig::default()).unwrap();
    let inputs = RcnnLossInputs {
        class_logits: &z(&[3, 5]),
        box_regression: &z(&[3, 16]),
        labels: &labels,
        regression_targets: &z(&[3, 4]),
    };
    bad(
        loss.forward(&inputs).unwrap_err(),
        "box_regression: expected [3, 20]",
    );
    let out_of_range = Tensor::from_slice(&[0i64, 5, 1]);
    let inputs = RcnnLossInputs {
        class_logits: &z(&[3, 5]),
        box_regression: &z(&[3, 20]),
        labels: &out_of_range,
        regression_targets: &z(&[3, 4]),
    };
    bad(
        loss.forward(&inputs).unwrap_err(),
        "labels: 1 values outside 0..5",
    );
    let vs = tch::nn::VarStore::new(CPU);
    let head = TwoMlpHead::new(&vs.root(), 2 * 7 * 7, 16).unwrap();
    bad(head.forward(&z(&[3, 2, 5, 5])).unwrap_err(), "pooled RoIs");
    bad(
        FastRcnnPredictor::new(&vs.root(), 16, 1).unwrap_err(),
        "2 classes",
    );
    bad(
        postprocess_detections(
            &z(&[3, 5]),
            &z(&[3, 20]),
            &[z(&[2, 4])],
            &[[10, 10]],
            &PostprocessConfig::default(),
        )
        .unwrap_err(),
        "proposals",
    );
    let one = [z(&[3, 5]), z(&[3, 20]), Tensor::from_slice(&[1.0f32])];
    bad(
        postprocess_detections(
            &one[0],
            &one[1],
            &one[2..],
            &[[10, 10]],
            &Default::default(),
        )
        .unwrap_err(),
        "proposals[0]",
    );
    bad(
        own_class_deltas(&z(&[3, 20]), &Tensor::from(1i64)).unwrap_err(),
        "labels: expected [R]",
    );
}
