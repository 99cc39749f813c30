//! Model specs: the shipped files load with the documented anchor counts, and malformed specs
//! fail with errors that name the file and the field.

mod common;

use serde_json::{json, Value};
use tchcv::spec::{
    AnchorSpec, IgnoreBand, MatchingSpec, ModelSpec, RpnSpec, TrainTest, DEFAULT_DECODE_CLAMP,
};

fn load(name: &str) -> ModelSpec {
    ModelSpec::load(&common::repo().join("models").join(name))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn ssd300_json() -> Value {
    let text = std::fs::read_to_string(common::repo().join("models/ssd300.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The error of parsing `value` as `models/x.json`; checks it is marked as bad input.
fn error_of(value: &Value) -> String {
    let err = ModelSpec::from_json_str(&value.to_string(), "models/x.json")
        .expect_err("the spec should be rejected");
    assert!(
        tchcv::is_bad_input(&err),
        "not marked as bad input: {err:#}"
    );
    format!("{err:#}")
}

fn assert_error(value: &Value, want: &[&str]) {
    let msg = error_of(value);
    for w in want {
        assert!(msg.contains(w), "error {msg:?} lacks {w:?}");
    }
}

#[test]
fn shipped_specs_have_the_documented_anchor_counts() {
    for (name, count, per_cell) in [
        ("ssd300.json", 8732, vec![4, 6, 6, 6, 4, 4]),
        ("ssd512.json", 24564, vec![4, 6, 6, 6, 6, 4, 4]),
        // RetinaNet at 512: (64^2 + 32^2 + 16^2 + 8^2 + 4^2) cells x 9 = 5456 x 9.
        ("retinanet.json", 49104, vec![9; 5]),
    ] {
        let spec = load(name);
        assert_eq!(spec.num_anchors(), count, "{name}");
        assert_eq!(spec.anchors_per_cell(), per_cell, "{name}");
    }
    let ssd300 = load("ssd300.json");
    assert_eq!(
        ssd300.feature_map_sizes(),
        vec![[38, 38], [19, 19], [10, 10], [5, 5], [3, 3], [1, 1]]
    );
    assert_eq!(ssd300.anchors_per_map(), vec![5776, 2166, 600, 150, 36, 4]);
    assert!(ssd300.has_background_column());
    assert_eq!(ssd300.matching, MatchingSpec::Bipartite { threshold: 0.5 });
    assert_eq!(ssd300.coder.variances, Some([0.1, 0.2]));

    let retina = load("retinanet.json");
    assert!(!retina.has_background_column());
    assert_eq!(retina.coder.variances, None);
    assert!(matches!(
        retina.matching,
        MatchingSpec::MaxIou {
            band: IgnoreBand::Torchvision,
            ..
        }
    ));
}

#[test]
fn small_spec_is_cpu_friendly() {
    let spec = load("ssd_small.json");
    assert_eq!(spec.backbone, "small");
    assert_eq!(spec.head, "ssd");
    let n = spec.num_anchors();
    assert!((1000..=3000).contains(&n), "{n} anchors");
    assert!(spec.input_width() <= 192 && spec.feature_map_sizes().len() <= 4);
}

#[test]
fn specs_round_trip_through_to_json() {
    for name in [
        "ssd300.json",
        "ssd512.json",
        "retinanet.json",
        "ssd_small.json",
        "rpn_small.json",
    ] {
        let spec = load(name);
        let again = ModelSpec::from_json_str(&spec.to_json().to_string(), name).unwrap();
        assert_eq!(again, spec, "{name}");
    }
}

#[test]
fn defaults_fill_optional_fields() {
    let mut v = ssd300_json();
    let obj = v.as_object_mut().unwrap();
    for key in ["matching", "coder", "loss", "num_anchors", "description"] {
        obj.remove(key);
    }
    let spec = ModelSpec::from_json_str(&v.to_string(), "x").unwrap();
    assert_eq!(spec.matching, MatchingSpec::Bipartite { threshold: 0.5 });
    assert_eq!(spec.coder.variances, None);
    assert_eq!(spec.coder.decode_clamp, Some(DEFAULT_DECODE_CLAMP));
    assert_eq!(spec.loss, "ssd");
    assert!((DEFAULT_DECODE_CLAMP - (1000.0f64 / 16.0).ln()).abs() < 1e-15);

    let retina = json!({
        "name": "r", "input_size": [64, 32], "backbone": "b", "head": "retina",
        "anchors": {"style": "retina", "feature_maps": [[8, 16]], "steps": [[4, 4]],
                    "areas": [256], "aspect_ratios": [1], "scales": [1, 2]},
        "coder": {"variances": null, "decode_clamp": null}
    });
    let spec = ModelSpec::from_json_str(&retina.to_string(), "r").unwrap();
    assert_eq!(spec.loss, "focal");
    assert_eq!(spec.coder.decode_clamp, None);
    assert_eq!(spec.feature_map_sizes(), vec![[8, 16]]);
    assert_eq!(spec.num_anchors(), 8 * 16 * 2);
    let AnchorSpec::Retina(r) = &spec.anchors else {
        panic!("not retina")
    };
    assert_eq!((r.strides[0].y, r.strides[0].x), (4.0, 4.0));
    assert!(matches!(
        spec.matching,
        MatchingSpec::MaxIou {
            pos_iou: 0.5,
            neg_iou: 0.4,
            band: IgnoreBand::Torchvision,
            allow_low_quality: false
        }
    ));
}

#[test]
fn malformed_specs_name_the_file_and_field() {
    // Not JSON.
    let err = ModelSpec::from_json_str("{\"name\": ", "models/x.json").unwrap_err();
    assert!(tchcv::is_bad_input(&err));
    assert!(format!("{err:#}").contains("models/x.json: not valid JSON"));

    // A missing file.
    let err = ModelSpec::load(std::path::Path::new("models/does-not-exist.json")).unwrap_err();
    assert!(tchcv::is_bad_input(&err));
    assert!(format!("{err:#}").contains("models/does-not-exist.json"));

    let mut v = ssd300_json();
    v["anchors"]["steps"] = json!([8, 16, 32, 64, 100]);
    assert_error(
        &v,
        &["models/x.json: anchors.steps: expected 6 values (one per feature map), got 5"],
    );

    let mut v = ssd300_json();
    v["anchors"]["box_sizes"] = json!([30, 60, 111, 162, 213, 264]);
    assert_error(&v, &["models/x.json: anchors.box_sizes: expected 7 values"]);

    let mut v = ssd300_json();
    v["anchors"]["aspect_ratios"][2] = json!([2, -3]);
    assert_error(
        &v,
        &["models/x.json: anchors.aspect_ratios[2][1]: expected a number > 0, got -3"],
    );

    let mut v = ssd300_json();
    v.as_object_mut().unwrap().remove("input_size");
    assert_error(&v, &["models/x.json: input_size: missing"]);

    let mut v = ssd300_json();
    v["input_size"] = json!([300]);
    assert_error(&v, &["models/x.json: input_size: expected 2 values"]);

    let mut v = ssd300_json();
    v["anchors"]["feature_maps"][0] = json!("38");
    assert_error(
        &v,
        &["anchors.feature_maps[0]: expected a whole number > 0, got \"38\""],
    );

    let mut v = ssd300_json();
    v["anchors"]["style"] = json!("yolo");
    assert_error(
        &v,
        &["models/x.json: anchors.style: expected one of \"ssd\", \"retina\""],
    );

    let mut v = ssd300_json();
    v["anchors"]["aspect_ratio"] = json!([[2]]);
    assert_error(&v, &["models/x.json: anchors.aspect_ratio: unknown field"]);

    let mut v = ssd300_json();
    v["matching"] = json!({"rule": "max_iou", "pos_iou": 0.4, "neg_iou": 0.5});
    assert_error(
        &v,
        &["models/x.json: matching: neg_iou (0.5) must not exceed pos_iou (0.4)"],
    );

    let mut v = ssd300_json();
    v["matching"] = json!({"rule": "hungarian"});
    assert_error(&v, &["models/x.json: matching.rule: expected one of"]);

    let mut v = ssd300_json();
    v["matching"]["threshold"] = json!(1.5);
    assert_error(
        &v,
        &["matching.threshold: expected a number in [0, 1], got 1.5"],
    );

    let mut v = ssd300_json();
    v["coder"]["variances"] = json!([0.1]);
    assert_error(&v, &["models/x.json: coder.variances: expected 2 values"]);

    let mut v = ssd300_json();
    v["loss"] = json!("hinge");
    assert_error(&v, &["models/x.json: loss: expected one of"]);
    v["loss"] = json!("rpn");
    assert_error(
        &v,
        &["models/x.json: loss: \"rpn\" does not fit head \"ssd\""],
    );

    let mut v = ssd300_json();
    v["num_anchors"] = json!(8733);
    assert_error(
        &v,
        &["models/x.json: num_anchors: the spec says 8733 but its anchors give 8732 (38x38x4 + 19x19x6"],
    );

    let mut v = ssd300_json();
    v["anchors"] = json!({"style": "retina", "feature_maps": [4], "strides": [8], "steps": [8],
                          "areas": [64], "aspect_ratios": [1], "scales": [1]});
    v.as_object_mut().unwrap().remove("num_anchors");
    assert_error(
        &v,
        &["models/x.json: anchors: give strides or steps, not both"],
    );

    let mut v = ssd300_json();
    // 3800 * 3800 * 4 + 2166 + 600 + 150 + 36 + 4 = 57762956
    v["anchors"]["feature_maps"][0] = json!(3800);
    v.as_object_mut().unwrap().remove("num_anchors");
    assert_error(
        &v,
        &["models/x.json: anchors: 57762956 anchors (3800x3800x4"],
    );

    let v = json!([1, 2]);
    assert_error(&v, &["models/x.json: expected an object"]);
}

fn rpn_small_json() -> Value {
    let text = std::fs::read_to_string(common::repo().join("models/rpn_small.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn torchvision_style_loads_with_torchvision_defaults() {
    let spec = load("rpn_small.json");
    assert_eq!(
        (spec.backbone.as_str(), spec.head.as_str()),
        ("small", "rpn")
    );
    // (20^2 + 10^2 + 5^2 + 3^2) cells x (2 sizes x 3 ratios).
    assert_eq!(spec.num_anchors(), 534 * 6);
    assert_eq!(spec.anchors_per_cell(), vec![6; 4]);
    assert_eq!(spec.rpn, Some(RpnSpec::default()));

    // Without matching, strides, rpn and loss: torchvision's RPN defaults.
    let mut v = rpn_small_json();
    let obj = v.as_object_mut().unwrap();
    for key in ["matching", "rpn", "coder", "loss"] {
        obj.remove(key);
    }
    v["anchors"].as_object_mut().unwrap().remove("strides");
    v["anchors"]["aspect_ratios"] = json!([[1.0], [0.5, 2.0], [1.0], [1.0]]);
    v["anchors"]["sizes"] = json!([16, [32, 48], 64, 128]);
    v.as_object_mut().unwrap().remove("num_anchors");
    let spec = ModelSpec::from_json_str(&v.to_string(), "x").unwrap();
    assert_eq!(
        spec.matching,
        MatchingSpec::MaxIou {
            pos_iou: 0.7,
            neg_iou: 0.3,
            band: IgnoreBand::Torchvision,
            allow_low_quality: true
        }
    );
    assert_eq!(spec.rpn, None);
    assert_eq!(spec.rpn_or_default().batch_size_per_image, 256);
    assert_eq!(spec.rpn_or_default().sampler, "random");
    // Without a loss the rpn head takes the rpn loss: one objectness column, no background.
    assert_eq!(spec.loss, "rpn");
    assert!(!spec.has_background_column());
    assert_eq!(spec.coder.variances, None);
    assert_eq!(spec.anchors_per_cell(), vec![1, 4, 1, 1]);
    let AnchorSpec::Torchvision(t) = &spec.anchors else {
        panic!("not torchvision")
    };
    // input // map: 160 // 3 = 53.
    let strides: Vec<f64> = t.strides.iter().map(|s| s.x).collect();
    assert_eq!(strides, vec![8.0, 16.0, 32.0, 53.0]);
    assert_eq!(t.sizes[0], vec![16.0]);
    let again = ModelSpec::from_json_str(&spec.to_json().to_string(), "again").unwrap();
    assert_eq!(again, spec);

    // A max_iou matching that gives only some fields takes the style's other defaults.
    v["matching"] = json!({"rule": "max_iou", "pos_iou": 0.6});
    v["rpn"] = json!({"post_nms_top_n": {"train": 300, "test": 100}});
    let spec = ModelSpec::from_json_str(&v.to_string(), "x").unwrap();
    assert!(matches!(
        spec.matching,
        MatchingSpec::MaxIou {
            pos_iou: 0.6,
            neg_iou: 0.3,
            allow_low_quality: true,
            ..
        }
    ));
    let rpn = spec.rpn.unwrap();
    assert_eq!(
        rpn.post_nms_top_n,
        TrainTest {
            train: 300,
            test: 100
        }
    );
    assert_eq!(rpn.pre_nms_top_n, RpnSpec::default().pre_nms_top_n);
}

#[test]
fn malformed_torchvision_specs_name_the_file_and_field() {
    let cases = [
        (
            "/anchors/sizes",
            json!([[16], [32]]),
            "anchors.sizes: expected 4 values",
        ),
        (
            "/anchors/sizes",
            json!([[16], [], [64], [128]]),
            "anchors.sizes[1]: expected at least one value",
        ),
        (
            "/anchors/aspect_ratios",
            json!([0.5, -1]),
            "anchors.aspect_ratios[1]: expected a number > 0, got -1",
        ),
        (
            "/anchors/aspect_ratios",
            json!([[1.0], [1.0]]),
            "anchors.aspect_ratios: expected 4 values",
        ),
        (
            "/anchors/aspect_ratios",
            json!([[1.0], 2, [1.0], [1.0]]),
            "anchors.aspect_ratios[1]: expected a list",
        ),
        (
            "/anchors/strides",
            json!([8, 16, 32.5, 53]),
            "anchors.strides[2]: expected a whole number",
        ),
        (
            "/anchors/strides",
            json!([8, 16, 32]),
            "anchors.strides: expected 4 values",
        ),
        (
            "/anchors/feature_maps",
            json!([20, 10, 5, 300]),
            "anchors.feature_maps[3]: a 300x300 map in a 160x160 input gives a stride of 0",
        ),
        ("/anchors/steps", json!([8]), "anchors.steps: unknown field"),
        (
            "/rpn/positive_fraction",
            json!(1.5),
            "rpn.positive_fraction: expected a number in [0, 1], got 1.5",
        ),
        (
            "/rpn/batch_size_per_image",
            json!(0),
            "rpn.batch_size_per_image: expected a whole number > 0",
        ),
        (
            "/rpn/pre_nms_top_n",
            json!({"train": 10}),
            "rpn.pre_nms_top_n.test: missing",
        ),
        (
            "/rpn/min_size",
            json!(-1),
            "rpn.min_size: expected a number >= 0, got -1",
        ),
        ("/rpn/nms", json!(0.5), "rpn.nms: unknown field"),
        (
            "/rpn/sampler",
            json!("ohem"),
            "rpn.sampler: expected one of [\"random\", \"hard\", \"all\"], got \"ohem\"",
        ),
        (
            "/loss",
            json!("ssd"),
            "loss: \"ssd\" does not fit head \"rpn\"",
        ),
        ("/matching/band", json!("both"), "matching.band: expected"),
        (
            "/num_anchors",
            json!(3205),
            "num_anchors: the spec says 3205 but its anchors give 3204",
        ),
    ];
    for (pointer, value, want) in cases {
        let mut v = rpn_small_json();
        if pointer == "/anchors/feature_maps" {
            v["anchors"].as_object_mut().unwrap().remove("strides");
        }
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let target = if parent.is_empty() {
            &mut v
        } else {
            v.pointer_mut(parent).unwrap()
        };
        target[key] = value;
        if pointer != "/num_anchors" {
            v.as_object_mut().unwrap().remove("num_anchors");
        }
        assert_error(&v, &[&format!("models/x.json: {want}")]);
    }
}

#[test]
fn faster_rcnn_specs_carry_their_second_stage_and_bad_roi_heads_are_named() {
    let small = load("faster_rcnn_small.json");
    assert!(small.is_two_stage() && small.has_rpn());
    assert_eq!(small.loss, "rpn", "the first stage's loss");
    let roi = small.roi_heads_or_default();
    assert_eq!(roi.sampler.batch_size_per_image, 128);
    assert_eq!(roi.pool.maps, Some(vec![1]));
    assert_eq!(roi.representation_size, 256);
    let again = ModelSpec::from_json_str(&small.to_json().to_string(), "round trip").unwrap();
    assert_eq!(again, small, "to_json reads back");
    // torchvision's defaults where the spec gives none.
    let r50 = load("faster_rcnn_r50_fpn.json");
    assert_eq!(r50.num_anchors(), load("rpn_r50_fpn.json").num_anchors());
    let mut bare = serde_json::to_value(&r50).unwrap();
    bare.as_object_mut().unwrap().remove("roi_heads");
    let bare = ModelSpec::from_json_str(&bare.to_string(), "no roi_heads").unwrap();
    let d = bare.roi_heads_or_default();
    assert_eq!(
        (
            d.sampler.batch_size_per_image,
            d.representation_size,
            d.detections_per_image
        ),
        (512, 1024, 100)
    );
    assert_eq!((d.score_threshold, d.nms_threshold), (0.05, 0.5));

    let base = serde_json::to_value(&small).unwrap();
    let with = |patch: Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    assert_error(
        &with(json!({"roi_heads": {"samplr": {}}})),
        &["models/x.json", "roi_heads", "samplr"],
    );
    assert_error(
        &with(json!({"roi_heads": {"sampler": {"fg_iou": 0.4, "bg_iou_hi": 0.5}}})),
        &["roi_heads", "sampler", "bg_iou_hi"],
    );
    assert_error(
        &with(json!({"roi_heads": {"representation_size": 0}})),
        &["roi_heads", "representation_size"],
    );
    assert_error(&with(json!({"loss": "ssd"})), &["loss", "faster_rcnn"]);
    let mut ssd = ssd300_json();
    ssd["roi_heads"] = json!({});
    assert_error(&ssd, &["roi_heads", "faster_rcnn", "ssd"]);
}
