//! Parity of tchcv::bbox with the independent PyTorch reference (tests/reference/box_coder.py),
//! run at test time on fresh seeded cases, plus the committed fixtures.
//!
//! Tolerances: anchors within 1e-4 px (same order); class targets identical; loc targets
//! |a - b| <= 1e-5 |b| + 1e-6 (the 1e-6 floor covers deltas near zero, where a relative
//! bound means nothing; in practice they agree to 1 ulp); NMS kept indices identical; decoded
//! detections: same count, labels and scores identical, boxes within 1e-4 px.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};
use tchcv::bbox::{nms, BoxCoder, DecodeConfig, NmsMethod};
use tchcv::spec::{IgnoreBand, MatchingSpec, ModelSpec};

const LOC_RTOL: f64 = 1e-5;
const LOC_ATOL: f64 = 1e-6;
const ANCHOR_ATOL: f64 = 1e-4;

type Tensors = HashMap<String, Tensor>;

fn model(name: &str) -> PathBuf {
    common::repo().join("models").join(name)
}

/// Run `box_coder.py <cmd> ... --out DIR` and read `<stem>.safetensors` and `<stem>.json`.
fn reference(dir: &Path, stem: &str, args: &[&str]) -> (Tensors, Value) {
    let out = dir.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--out", &out]);
    common::run_reference("box_coder.py", &all);
    read_case(dir, stem)
}

fn read_case(dir: &Path, stem: &str) -> (Tensors, Value) {
    let tensors = common::read_safetensors(&dir.join(format!("{stem}.safetensors")));
    let text = std::fs::read_to_string(dir.join(format!("{stem}.json"))).expect("sidecar");
    (tensors, serde_json::from_str(&text).expect("sidecar JSON"))
}

fn take<'a>(t: &'a Tensors, name: &str) -> &'a Tensor {
    t.get(name)
        .unwrap_or_else(|| panic!("reference output lacks {name}"))
}

fn host_boxes(t: &Tensor) -> Vec<[f32; 4]> {
    tchcv::bbox::ops::host_boxes(t).expect("f32 boxes")
}

fn host_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64).contiguous().view(-1)).expect("i64")
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

/// A copy of a shipped spec with `patch` merged in, written into `dir`.
fn patched_spec(dir: &Path, name: &str, patch: Value) -> PathBuf {
    let text = std::fs::read_to_string(model(name)).expect("spec");
    let mut spec: Value = serde_json::from_str(&text).expect("spec JSON");
    merge(&mut spec, &patch);
    let path = dir.join(format!("patched_{name}"));
    std::fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).expect("write spec");
    path
}

/// Compare every encode case of a reference run with tchcv's encoder.
fn check_encode_cases(coder: &BoxCoder, spec: &ModelSpec, t: &Tensors, meta: &Value, what: &str) {
    common::assert_close(
        &format!("{what}: anchors"),
        &coder.anchors(),
        take(t, "anchors"),
        0.0,
        ANCHOR_ATOL,
    );
    let cases = meta["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "{what}: only {} cases", cases.len());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let ctx = format!("{what}: case {name}");
        let boxes = host_boxes(take(t, &format!("{name}.boxes")));
        let labels = host_i64(take(t, &format!("{name}.labels")));
        let enc = coder.encode(&boxes, &labels).expect(&ctx);
        let cls = host_i64(&enc.cls_targets);
        let ref_cls = host_i64(take(t, &format!("{name}.cls_targets")));
        if let Some(a) = (0..cls.len()).find(|&a| cls[a] != ref_cls[a]) {
            panic!(
                "{ctx}: cls_targets differ first at anchor {a}: tchcv {} reference {} \
                 ({} anchors differ; anchor xyxy {:?})",
                cls[a],
                ref_cls[a],
                (0..cls.len()).filter(|&i| cls[i] != ref_cls[i]).count(),
                coder.host_anchors().xyxy[a]
            );
        }
        common::assert_close(
            &format!("{ctx}: loc_targets"),
            &enc.loc_targets,
            take(t, &format!("{name}.loc_targets")),
            LOC_RTOL,
            LOC_ATOL,
        );
        assert_eq!(
            enc.num_pos_per_box,
            host_i64(take(t, &format!("{name}.num_pos_per_box"))),
            "{ctx}: num_pos_per_box"
        );
        let loc = Vec::<f32>::try_from(enc.loc_targets.view(-1)).unwrap();
        assert!(loc.iter().all(|x| x.is_finite()), "{ctx}: non-finite loc");
        for (a, &c) in cls.iter().enumerate() {
            if c <= 0 {
                assert_eq!(
                    &loc[4 * a..4 * a + 4],
                    &[0.0; 4],
                    "{ctx}: anchor {a} not zero"
                );
            }
        }
        check_named_case(spec, name, case, &cls, &enc.num_pos_per_box, &ctx);
    }
}

/// The behaviours each named edge case exists for (beyond equality with the reference).
fn check_named_case(
    spec: &ModelSpec,
    name: &str,
    case: &Value,
    cls: &[i64],
    per_box: &[i64],
    ctx: &str,
) {
    let num_pos = cls.iter().filter(|&&c| c > 0).count();
    match name {
        "empty" | "degenerate_only" => {
            assert!(
                cls.iter().all(|&c| c == 0),
                "{ctx}: expected all background"
            )
        }
        "degenerate_mixed" => {
            assert_eq!(per_box[0], 0, "{ctx}: degenerate box 0 owns anchors");
            assert_eq!(per_box[2], 0, "{ctx}: degenerate box 2 owns anchors");
            assert!(
                cls.iter().all(|&c| c != 5 && c != 7),
                "{ctx}: labels of dropped boxes"
            );
        }
        "iou_half" => {
            assert_eq!(
                case["anchor_iou"].as_f64(),
                Some(0.5),
                "{ctx}: the case lost its 0.5"
            );
            let a = case["anchor"].as_u64().unwrap() as usize;
            assert!(
                cls[a] > 0,
                "{ctx}: IoU exactly 0.5 must be positive (>=), got {}",
                cls[a]
            );
        }
        "iou_0_4" => {
            let a = case["anchor"].as_u64().unwrap() as usize;
            assert_eq!(
                case["anchor_iou"].as_f64(),
                Some(0.4f32 as f64),
                "{ctx}: lost its 0.4"
            );
            if let MatchingSpec::MaxIou {
                band,
                allow_low_quality: false,
                ..
            } = &spec.matching
            {
                let want = match band {
                    IgnoreBand::Torchvision => -1,
                    IgnoreBand::Torchcv => 0,
                };
                assert_eq!(cls[a], want, "{ctx}: IoU == neg_iou with band {band:?}");
            }
        }
        "same_anchor" => {
            let a = case["shared_anchor"].as_u64().unwrap() as usize;
            assert!(cls[a] > 0, "{ctx}: the shared anchor is not positive");
            if matches!(spec.matching, MatchingSpec::Bipartite { .. }) {
                assert!(
                    per_box.iter().all(|&n| n >= 1),
                    "{ctx}: a GT without anchors {per_box:?}"
                );
            }
        }
        "e9_two_positives" => {
            if let Some(n) = case["torchcv_num_pos"].as_u64() {
                assert_eq!(num_pos as u64, n, "{ctx}: reference-semantics E9 says {n}");
            }
        }
        "two_over_half" if !matches!(spec.matching, MatchingSpec::MaxIou { .. }) => {
            assert!(
                num_pos >= 2,
                "{ctx}: two anchors >= 0.5 give >= 2 positives"
            )
        }
        _ => {}
    }
}

fn encode_parity(spec_path: &Path, what: &str) {
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let spec_arg = spec_path.display().to_string();
    let (t, meta) = reference(
        &dir,
        "encode",
        &["encode", "--spec", &spec_arg, "--seed", &seed],
    );
    let spec = ModelSpec::load(spec_path).unwrap();
    let coder = BoxCoder::from_spec(&spec).unwrap();
    check_encode_cases(&coder, &spec, &t, &meta, what);
}

/// [`encode_parity`] on a shipped spec with `patch` merged in.
fn encode_parity_patched(name: &str, patch: Value, what: &str) {
    let dir = common::scratch(&format!("{what}_spec"));
    encode_parity(&patched_spec(&dir, name, patch), what);
}

#[test]
fn encode_matches_reference_ssd300_bipartite() {
    encode_parity(&model("ssd300.json"), "box_encode_ssd300");
}

#[test]
fn encode_matches_reference_ssd300_forced_best() {
    let patch = json!({"matching": {"rule": "forced_best", "threshold": 0.5}});
    encode_parity_patched("ssd300.json", patch, "box_encode_ssd300_forced");
}

#[test]
fn encode_matches_reference_ssd512() {
    encode_parity(&model("ssd512.json"), "box_encode_ssd512");
}

#[test]
fn encode_matches_reference_ssd_small() {
    encode_parity(&model("ssd_small.json"), "box_encode_ssd_small");
}

#[test]
fn encode_matches_reference_retinanet_torchvision_band() {
    encode_parity(&model("retinanet.json"), "box_encode_retinanet");
}

#[test]
fn encode_matches_reference_retinanet_torchcv_band_low_quality() {
    let patch = json!({"matching": {"band": "torchcv", "allow_low_quality": true}});
    encode_parity_patched("retinanet.json", patch, "box_encode_retina_torchcv");
}

#[test]
fn encode_matches_reference_clipped_ssd300() {
    let patch = json!({"anchors": {"clip": true}});
    encode_parity_patched("ssd300.json", patch, "box_encode_ssd300_clip");
}

/// ssd.pytorch clamps its priors (clip); reference-semantics E13 counts 134 of SSD300's 8732
/// boxes that change.
#[test]
fn clipped_ssd300_changes_134_boxes() {
    let dir = common::scratch("box_clip_count");
    let clipped = patched_spec(&dir, "ssd300.json", json!({"anchors": {"clip": true}}));
    let a = tchcv::bbox::Anchors::from_spec(&ModelSpec::load(&clipped).unwrap());
    let b = tchcv::bbox::Anchors::from_spec(&ModelSpec::load(&model("ssd300.json")).unwrap());
    let changed = a
        .cxcywh
        .iter()
        .zip(&b.cxcywh)
        .filter(|(x, y)| x != y)
        .count();
    assert_eq!(changed, 134);
}

#[test]
fn retinanet_anchors_match_torchcv_construction() {
    let dir = common::scratch("box_retina_anchors");
    let spec_arg = model("retinanet.json").display().to_string();
    let (t, meta) = reference(&dir, "anchors", &["anchors", "--spec", &spec_arg]);
    let spec = ModelSpec::load(&model("retinanet.json")).unwrap();
    let coder = BoxCoder::from_spec(&spec).unwrap();
    assert_eq!(meta["count"], 49104);
    for name in ["anchors", "anchors_torchcv"] {
        common::assert_close(name, &coder.anchors(), take(&t, name), 0.0, ANCHOR_ATOL);
    }
}

/// NMS against the reference greedy NMS on clustered random boxes: the same kept indices in the
/// same order, class-agnostic and class-wise, with both methods, on `device`.
fn nms_parity(device: Device, what: &str) {
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let (t, meta) = reference(&dir, "nms", &["nms", "--seed", &seed, "--cases", "12"]);
    check_nms_cases(&t, &meta, device, what);
}

fn check_nms_cases(t: &Tensors, meta: &Value, device: Device, what: &str) {
    for case in meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let thr = case["iou_threshold"].as_f64().unwrap();
        let boxes = take(t, &format!("{name}.boxes")).to_device(device);
        let scores = take(t, &format!("{name}.scores")).to_device(device);
        let classes = take(t, &format!("{name}.classes")).to_device(device);
        for method in [NmsMethod::Host, NmsMethod::Matrix, NmsMethod::Auto] {
            let ctx = format!("{what}: {name} (thr {thr}, {method:?})");
            let keep = nms::batched_nms_with(&boxes, &scores, None, thr, method).expect(&ctx);
            assert_eq!(keep.device(), device, "{ctx}: result device");
            assert_eq!(
                host_i64(&keep.to_device(Device::Cpu)),
                host_i64(take(t, &format!("{name}.keep"))),
                "{ctx}: kept indices"
            );
            let keep =
                nms::batched_nms_with(&boxes, &scores, Some(&classes), thr, method).expect(&ctx);
            assert_eq!(
                host_i64(&keep.to_device(Device::Cpu)),
                host_i64(take(t, &format!("{name}.keep_batched"))),
                "{ctx}: kept indices, class-wise"
            );
        }
    }
}

#[test]
fn nms_matches_reference_greedy_cpu() {
    nms_parity(Device::Cpu, "box_nms_cpu");
}

#[test]
fn nms_matches_reference_greedy_cuda() {
    if let Some(device) = common::cuda_or_skip("nms_matches_reference_greedy_cuda") {
        nms_parity(device, "box_nms_cuda");
    }
}

fn check_decode(coder: &BoxCoder, t: &Tensors, meta: &Value, device: Device, what: &str) {
    let cfg: DecodeConfig = serde_json::from_value(meta["config"].clone()).expect("config");
    let loc = take(t, "loc_preds").to_device(device);
    let scores = take(t, "scores").to_device(device);
    common::assert_close(
        &format!("{what}: decoded boxes"),
        &coder.decode_boxes(&loc).unwrap(),
        take(t, "boxes"),
        1e-6,
        1e-4,
    );
    let dets = coder.decode(&loc, &scores, &cfg).unwrap();
    assert_eq!(dets.len() as i64, loc.size()[0]);
    let mut total = 0;
    for (n, d) in dets.iter().enumerate() {
        let ctx = format!("{what}: image {n}");
        let ref_scores = take(t, &format!("det{n}.scores"));
        assert_eq!(d.boxes.device(), device, "{ctx}: device");
        assert_eq!(d.len(), ref_scores.size()[0], "{ctx}: detection count");
        assert_eq!(
            host_i64(&d.labels.to_device(Device::Cpu)),
            host_i64(take(t, &format!("det{n}.labels"))),
            "{ctx}: labels"
        );
        if d.is_empty() {
            continue;
        }
        common::assert_close(&format!("{ctx}: scores"), &d.scores, ref_scores, 0.0, 0.0);
        common::assert_close(
            &format!("{ctx}: boxes"),
            &d.boxes,
            take(t, &format!("det{n}.boxes")),
            1e-6,
            1e-4,
        );
        assert!(d.len() <= cfg.max_detections);
        total += d.len();
    }
    assert!(
        total > 0,
        "{what}: nothing detected at all, the case tests little"
    );
}

fn decode_parity(spec_name: &str, config: Value, device: Device, what: &str) {
    let seed = common::fresh_seed(what).to_string();
    let dir = common::scratch(what);
    let spec_path = model(spec_name);
    let spec_arg = spec_path.display().to_string();
    let config = config.to_string();
    let (t, meta) = reference(
        &dir,
        "decode",
        &[
            "decode", "--spec", &spec_arg, "--seed", &seed, "--images", "3", "--config", &config,
        ],
    );
    let coder = BoxCoder::from_spec(&ModelSpec::load(&spec_path).unwrap()).unwrap();
    check_decode(&coder, &t, &meta, device, what);
}

#[test]
fn decode_matches_reference_ssd_small() {
    decode_parity(
        "ssd_small.json",
        json!({}),
        Device::Cpu,
        "box_decode_ssd_small",
    );
}

#[test]
fn decode_matches_reference_ssd300_no_top_k_clipped() {
    decode_parity(
        "ssd300.json",
        json!({"top_k": null, "max_detections": 100, "clip_boxes": true, "score_threshold": 0.2}),
        Device::Cpu,
        "box_decode_ssd300",
    );
}

#[test]
fn decode_matches_reference_retinanet_sigmoid() {
    decode_parity(
        "retinanet.json",
        json!({"score_threshold": 0.05, "nms_threshold": 0.5, "top_k": 100}),
        Device::Cpu,
        "box_decode_retinanet",
    );
}

#[test]
fn decode_matches_reference_cuda() {
    if let Some(device) = common::cuda_or_skip("decode_matches_reference_cuda") {
        decode_parity("ssd300.json", json!({}), device, "box_decode_ssd300_cuda");
        decode_parity(
            "retinanet.json",
            json!({"score_threshold": 0.05, "top_k": 1000}),
            device,
            "box_decode_retinanet_cuda",
        );
    }
}

fn fixtures() -> PathBuf {
    common::repo().join("tests/fixtures/box_coder")
}

/// The committed fixtures (made by `box_coder.py fixtures`): no Python needed.
#[test]
fn committed_fixtures_encode_ssd_small() {
    let (t, meta) = read_case(&fixtures(), "encode_ssd_small");
    let spec = ModelSpec::load(&model("ssd_small.json")).unwrap();
    let coder = BoxCoder::from_spec(&spec).unwrap();
    check_encode_cases(&coder, &spec, &t, &meta, "fixture encode_ssd_small");
}

#[test]
fn committed_fixtures_nms_and_decode() {
    let (t, meta) = read_case(&fixtures(), "nms");
    check_nms_cases(&t, &meta, Device::Cpu, "fixture nms");
    let (t, meta) = read_case(&fixtures(), "decode");
    let coder = BoxCoder::from_spec(&ModelSpec::load(&model("ssd_small.json")).unwrap()).unwrap();
    check_decode(&coder, &t, &meta, Device::Cpu, "fixture decode");
}
